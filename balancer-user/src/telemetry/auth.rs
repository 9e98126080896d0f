//! Basic authentication (RFC 7617) of the telemetry listener: the `Authorization` header
//! compared with the configured user and password.

use super::config::Credentials;

/// The realm browsers show when they ask for the password.
pub const REALM: &str = "balancer";

/// What an `Authorization` header must say for `credentials`.
#[derive(Clone)]
pub struct Expected {
    header: Vec<u8>,
}

impl Expected {
    #[must_use]
    pub fn new(credentials: &Credentials) -> Self {
        let pair = format!("{}:{}", credentials.user, credentials.password);
        Expected {
            header: format!("Basic {}", base64(pair.as_bytes())).into_bytes(),
        }
    }

    /// Whether `header` (the `Authorization` value, if any) carries the credentials. The
    /// comparison takes as long whatever bytes differ, so its time does not tell an
    /// attacker how much of a guess was right.
    #[must_use]
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else {
            return false;
        };
        if header.len() != self.header.len() {
            return false;
        }
        let scheme_ok = header[..6].eq_ignore_ascii_case(b"basic ");
        let diff = header[6..]
            .iter()
            .zip(&self.header[6..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        scheme_ok && diff == 0
    }
}

/// Standard base64 with padding (RFC 4648), for the one header above.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{base64, Expected};
    use crate::telemetry::config::Credentials;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn only_the_right_user_and_password_pass() {
        let expected = Expected::new(&Credentials {
            user: "Aladdin".into(),
            password: "open sesame".into(),
        });
        // RFC 7617's example.
        assert!(expected.accepts(Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")));
        assert!(expected.accepts(Some(b"basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")));
        for refused in [
            None,
            Some(&b""[..]),
            Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ"),
            Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZA=="),
            Some(b"Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert!(!expected.accepts(refused), "{refused:?}");
        }
    }
}
