//! The stats page's admin forms: a form body (`application/x-www-form-urlencoded`) as the
//! control [`Request`] the CLI would send for it (`backend weight`).

use std::net::SocketAddr;

use crate::api::Request;
use crate::config::MAX_WEIGHT;

/// Why a form is refused (answered with 400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("the form has no {0}")]
    Missing(&'static str),
    #[error("{0:?} is not ADDRESS:PORT")]
    Backend(String),
    #[error("weight {0:?} is not a number from 0 to {MAX_WEIGHT}")]
    Weight(String),
    #[error("unknown action {0:?} (drain, enable or weight)")]
    Action(String),
}

/// `pool=P&backend=A:P&action=drain|enable|weight&weight=N` as a request: drain sets the
/// weight to 0, enable and weight set it to `weight`.
///
/// # Errors
/// A field is missing or malformed.
pub fn parse(body: &str) -> Result<Request, ActionError> {
    let fields: Vec<(String, String)> = body
        .split('&')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap_or((f, ""));
            (decode(k), decode(v))
        })
        .collect();
    let field = |name: &'static str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
            .ok_or(ActionError::Missing(name))
    };
    let target = field("pool")?.to_owned();
    let backend = field("backend")?;
    let address: SocketAddr = backend
        .parse()
        .map_err(|_| ActionError::Backend(backend.to_owned()))?;
    let weight = match field("action")? {
        "drain" => 0,
        "enable" | "weight" => {
            let w = field("weight")?;
            w.parse::<u32>()
                .ok()
                .filter(|w| *w <= MAX_WEIGHT)
                .ok_or_else(|| ActionError::Weight(w.to_owned()))?
        }
        other => return Err(ActionError::Action(other.to_owned())),
    };
    Ok(Request::BackendWeight {
        target,
        address,
        weight,
    })
}

/// A form value: `+` is a space, `%XX` a byte; malformed escapes are kept as written.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .map(|d| u8::try_from(d).expect("a hex digit"))
}

#[cfg(test)]
mod tests {
    use super::{decode, parse, ActionError};
    use crate::api::Request;

    fn weight(target: &str, address: &str, weight: u32) -> Request {
        Request::BackendWeight {
            target: target.into(),
            address: address.parse().unwrap(),
            weight,
        }
    }

    #[test]
    fn forms_become_the_clis_requests() {
        let cases = [
            (
                "pool=web&backend=10.0.2.11%3A80&action=drain",
                weight("web", "10.0.2.11:80", 0),
            ),
            (
                "action=enable&weight=3&pool=web&backend=10.0.2.11:80",
                weight("web", "10.0.2.11:80", 3),
            ),
            (
                "pool=my+pool&backend=10.0.2.12:8080&action=weight&weight=0",
                weight("my pool", "10.0.2.12:8080", 0),
            ),
            (
                "pool=web6&backend=%5Bfd00%3A2%3A%3A11%5D%3A80&action=drain",
                weight("web6", "[fd00:2::11]:80", 0),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body), Ok(expected), "{body}");
        }
    }

    #[test]
    fn malformed_forms_say_why() {
        let cases = [
            (
                "backend=10.0.2.11:80&action=drain",
                ActionError::Missing("pool"),
            ),
            ("pool=web&action=drain", ActionError::Missing("backend")),
            (
                "pool=web&backend=10.0.2.11&action=drain",
                ActionError::Backend("10.0.2.11".into()),
            ),
            (
                "pool=web&backend=10.0.2.11:80",
                ActionError::Missing("action"),
            ),
            (
                "pool=web&backend=10.0.2.11:80&action=enable",
                ActionError::Missing("weight"),
            ),
            (
                "pool=web&backend=10.0.2.11:80&action=weight&weight=-1",
                ActionError::Weight("-1".into()),
            ),
            (
                "pool=web&backend=10.0.2.11:80&action=weight&weight=99999999",
                ActionError::Weight("99999999".into()),
            ),
            (
                "pool=web&backend=10.0.2.11:80&action=delete",
                ActionError::Action("delete".into()),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body), Err(expected), "{body}");
        }
    }

    #[test]
    fn decoding_keeps_malformed_escapes() {
        assert_eq!(decode("a%20b+c%3a"), "a b c:");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
