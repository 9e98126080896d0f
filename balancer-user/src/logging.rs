//! The agent's log: `log` records through `env_logger` (`RUST_LOG` filters, info by
//! default), as text for people or, with `--log-format json`, one JSON object per line for
//! log shippers. The records of what an operator follows (health transitions, VRRP
//! transitions, reloads, weight changes, interfaces) carry key-values (`log::info!(pool =
//! ..; "...")`): the JSON format has them under `fields`; the text says them in its words.

use std::io::Write as _;

use log::kv::{Key, Value, VisitSource};

/// How the agent writes its log (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[2026-01-01T00:00:00Z INFO  balancer::lb] message key=value`.
    #[default]
    Text,
    /// `{"timestamp":..,"level":..,"target":..,"message":..,"fields":{..}}` per line.
    Json,
}

/// Installs the logger for the process.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = json_line(&buf.timestamp_millis().to_string(), record);
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// One record as a JSON object.
fn json_line(timestamp: &str, record: &log::Record<'_>) -> String {
    let mut fields = Fields(serde_json::Map::new());
    // (A visitor that never fails.)
    let _ = record.key_values().visit(&mut fields);
    let mut line = serde_json::json!({
        "timestamp": timestamp,
        "level": record.level().as_str(),
        "target": record.target(),
        "message": record.args().to_string(),
    });
    if !fields.0.is_empty() {
        line["fields"] = serde_json::Value::Object(fields.0);
    }
    line.to_string()
}

/// A record's key-values: numbers and booleans as such, the rest as their text.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(x) = value.to_f64() {
            serde_json::Number::from_f64(x).map_or_else(|| x.to_string().into(), Into::into)
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_object_with_its_fields() {
        let backend: std::net::SocketAddrV4 = "10.0.2.11:80".parse().unwrap();
        let kvs: [(&str, Value<'_>); 4] = [
            ("pool", Value::from("web")),
            ("backend", Value::from_display(&backend)),
            ("transitions", Value::from(3u64)),
            ("up", Value::from(false)),
        ];
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            &log::Record::builder()
                .level(log::Level::Info)
                .target("balancer::health")
                .args(format_args!(
                    "pool web: backend {backend} UP -> DOWN (\"refused\")"
                ))
                .key_values(&kvs)
                .build(),
        );
        assert!(!line.contains('\n'), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "timestamp": "2026-01-01T00:00:00.000Z",
                "level": "INFO",
                "target": "balancer::health",
                "message": "pool web: backend 10.0.2.11:80 UP -> DOWN (\"refused\")",
                "fields": {"pool": "web", "backend": "10.0.2.11:80", "transitions": 3, "up": false},
            })
        );
        let plain = json_line(
            "t",
            &log::Record::builder()
                .level(log::Level::Warn)
                .args(format_args!("no fields"))
                .build(),
        );
        let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(plain["message"], "no fields");
        assert!(plain.get("fields").is_none(), "{plain}");
    }
}
