//! What a key under a discovery prefix holds: `address:port`, or a JSON object
//! `{"address": "10.0.2.11", "port": 80, "weight": 2}` (other fields are ignored, so that
//! registrars may store more), and the backend set a prefix's keys make.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use crate::config::{check_backend_address, family, DEFAULT_WEIGHT, MAX_WEIGHT};

/// A backend as one key gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// The backends a prefix gives a pool: address -> weight. Ordered by address, so that
/// every agent applies the same set in the same order.
pub type Backends = BTreeMap<SocketAddr, u32>;

/// Why a key's value is not a backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("{0:?} is neither ADDRESS:PORT nor a JSON object")]
    Unrecognised(String),
    #[error("JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Address(String),
    #[error("weight {0} is above the largest, {MAX_WEIGHT}")]
    Weight(u32),
}

#[derive(serde::Deserialize)]
struct JsonValue {
    address: IpAddr,
    port: u16,
    #[serde(default)]
    weight: Option<u32>,
}

/// Parses one key's value.
///
/// # Errors
/// When the value is not a usable backend (see [`ValueError`]).
pub fn parse(value: &[u8]) -> Result<Discovered, ValueError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| ValueError::NotUtf8)?
        .trim();
    let (addr, weight) = if text.starts_with('{') {
        let json: JsonValue =
            serde_json::from_str(text).map_err(|e| ValueError::Json(e.to_string()))?;
        (
            SocketAddr::new(json.address, json.port),
            json.weight.unwrap_or(DEFAULT_WEIGHT),
        )
    } else {
        let addr = text
            .parse()
            .map_err(|_| ValueError::Unrecognised(excerpt(text)))?;
        (addr, DEFAULT_WEIGHT)
    };
    check_backend_address(addr).map_err(|e| ValueError::Address(format!("{addr}: {e}")))?;
    if weight > MAX_WEIGHT {
        return Err(ValueError::Weight(weight));
    }
    Ok(Discovered { addr, weight })
}

/// At most this many characters of a refused value are quoted (in logs).
const QUOTED: usize = 64;

/// `text`, or its first [`QUOTED`] characters and its length: any value may sit under a
/// prefix, and the agent logs the refused ones on every list.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(QUOTED) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
    }
}

/// The backend set of `keys` (key -> backend), and the keys skipped with why, to be
/// logged: when two keys name one address, the first key (in key order) gives its weight;
/// the backends of a pool are of one family, the first key's.
#[must_use]
pub fn backends(keys: &BTreeMap<String, Discovered>) -> (Backends, Vec<(String, String)>) {
    let mut set = Backends::new();
    let mut skipped = Vec::new();
    let first = keys.iter().next();
    for (key, d) in keys {
        if let Some((first_key, first)) =
            first.filter(|(_, f)| f.addr.is_ipv4() != d.addr.is_ipv4())
        {
            skipped.push((
                key.clone(),
                format!(
                    "{} is an {} backend, and the first key ({first_key}) an {} one: the \
                     backends of a pool must be of one family",
                    d.addr,
                    family(d.addr.ip()),
                    family(first.addr.ip())
                ),
            ));
            continue;
        }
        match set.entry(d.addr) {
            std::collections::btree_map::Entry::Occupied(_) => {
                skipped.push((
                    key.clone(),
                    format!("{} is given by an earlier key", d.addr),
                ));
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(d.weight);
            }
        }
    }
    (set, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_or_refused_with_the_reason() {
        let ok = |addr: &str, weight| {
            Ok(Discovered {
                addr: addr.parse().unwrap(),
                weight,
            })
        };
        let cases: &[(&str, Result<Discovered, ValueError>)] = &[
            ("10.0.2.11:80", ok("10.0.2.11:80", DEFAULT_WEIGHT)),
            (" 10.0.2.11:80\n", ok("10.0.2.11:80", DEFAULT_WEIGHT)),
            (
                r#"{"address": "10.0.2.12", "port": 8080, "weight": 3}"#,
                ok("10.0.2.12:8080", 3),
            ),
            (
                r#"{"address": "10.0.2.12", "port": 8080, "zone": "a"}"#,
                ok("10.0.2.12:8080", DEFAULT_WEIGHT),
            ),
            (
                r#"{"address": "10.0.2.12", "port": 80, "weight": 0}"#,
                ok("10.0.2.12:80", 0),
            ),
            ("[fd00::2:11]:80", ok("[fd00::2:11]:80", DEFAULT_WEIGHT)),
            (
                r#"{"address": "fd00::2:12", "port": 80, "weight": 2}"#,
                ok("[fd00::2:12]:80", 2),
            ),
            ("web-1:80", Err(ValueError::Unrecognised("web-1:80".into()))),
            ("", Err(ValueError::Unrecognised(String::new()))),
            (
                "10.0.2.11",
                Err(ValueError::Unrecognised("10.0.2.11".into())),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(&parse(value.as_bytes()), expected, "{value:?}");
        }
        let refused = [
            &b"\xff\xfe"[..],
            br#"{"address": "10.0.2.12"}"#,
            br#"{"address": "10.0.2.12", "port": 70000}"#,
            // Link-local: no interface to reach it by.
            br#"{"address": "fe80::1", "port": 80}"#,
            b"[fe80::1]:80",
            b"10.0.2.11:0",
            b"0.0.0.0:80",
            b"224.0.0.1:80",
            br#"{"address": "10.0.2.12", "port": 80, "weight": 4294967295}"#,
        ];
        for value in refused {
            assert!(parse(value).is_err(), "{value:?} accepted");
        }
        // A large value is quoted in part.
        let large = "x".repeat(1 << 20);
        let shown = format!("{}... (1048576 bytes)", &large[..QUOTED]);
        assert_eq!(
            parse(large.as_bytes()),
            Err(ValueError::Unrecognised(shown))
        );
    }

    #[test]
    fn an_address_named_twice_takes_the_first_key() {
        let d = |addr: &str, weight| Discovered {
            addr: addr.parse().unwrap(),
            weight,
        };
        let keys = BTreeMap::from([
            ("/s/b".to_owned(), d("10.0.2.11:80", 2)),
            ("/s/a".to_owned(), d("10.0.2.11:80", 5)),
            ("/s/c".to_owned(), d("10.0.2.12:80", 1)),
        ]);
        let (set, duplicates) = backends(&keys);
        assert_eq!(
            set,
            Backends::from([
                ("10.0.2.11:80".parse().unwrap(), 5),
                ("10.0.2.12:80".parse().unwrap(), 1)
            ])
        );
        assert_eq!(
            duplicates,
            [(
                "/s/b".to_owned(),
                "10.0.2.11:80 is given by an earlier key".to_owned()
            )]
        );
    }

    #[test]
    fn the_first_key_gives_the_family() {
        let d = |addr: &str| Discovered {
            addr: addr.parse().unwrap(),
            weight: 1,
        };
        let keys = BTreeMap::from([
            ("/s/a".to_owned(), d("[fd00::2:11]:80")),
            ("/s/b".to_owned(), d("10.0.2.12:80")),
            ("/s/c".to_owned(), d("[fd00::2:12]:80")),
        ]);
        let (set, skipped) = backends(&keys);
        assert_eq!(
            set,
            Backends::from([
                ("[fd00::2:11]:80".parse().unwrap(), 1),
                ("[fd00::2:12]:80".parse().unwrap(), 1)
            ])
        );
        assert_eq!(
            skipped,
            [(
                "/s/b".to_owned(),
                "10.0.2.12:80 is an IPv4 backend, and the first key (/s/a) an IPv6 one: the \
                 backends of a pool must be of one family"
                    .to_owned()
            )]
        );
    }
}
