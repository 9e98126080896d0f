//! `[telemetry]`: the listener of `/metrics`, `/status.json` and the stats page, its basic
//! authentication and admin mode.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::{Checked, Validator};
use crate::config::raw::{RawAuth, RawTelemetry};
use crate::config::{Credentials, TelemetryConfig};
use crate::telemetry::config::DEFAULT_REFRESH;

impl Validator<'_> {
    pub(super) fn telemetry(&self, raw: RawTelemetry) -> Checked<TelemetryConfig> {
        let listen = raw.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.error(
                raw.listen.span(),
                "telemetry.listen",
                format!(
                    "{:?} is not an address and port (write e.g. \"127.0.0.1:9901\")",
                    raw.listen.get_ref()
                ),
            )
        })?;
        let auth = raw.auth.map(|a| self.credentials(a)).transpose()?;
        let admin = match raw.admin {
            Some(admin) if *admin.get_ref() && auth.is_none() => {
                return Err(self.error(
                    admin.span(),
                    "telemetry.admin",
                    "admin mode lets whoever reaches the page change backends: it needs \
                     telemetry.auth",
                ))
            }
            Some(admin) => admin.into_inner(),
            None => false,
        };
        let refresh = match &raw.refresh {
            Some(r) => self.duration(
                r,
                "telemetry.refresh",
                Duration::from_secs(1)..=Duration::from_hours(1),
                "1s and 1h",
            )?,
            None => DEFAULT_REFRESH,
        };
        Ok(TelemetryConfig {
            listen,
            auth,
            admin,
            refresh,
        })
    }

    fn credentials(&self, raw: Spanned<RawAuth>) -> Checked<Credentials> {
        let raw = raw.into_inner();
        let user = raw.user.get_ref();
        // Basic authentication joins them with a colon: one in the user cannot be told apart.
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(self.error(
                raw.user.span(),
                "telemetry.auth.user",
                format!("{user:?}: a user name is not empty and has no ':' or control character"),
            ));
        }
        if raw.password.get_ref().is_empty() {
            return Err(self.error(
                raw.password.span(),
                "telemetry.auth.password",
                "the password is empty",
            ));
        }
        Ok(Credentials {
            user: raw.user.into_inner(),
            password: raw.password.into_inner(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{assert_error_at, ONE_VIP, ORIGIN};
    use crate::config::{parse, Credentials, TelemetryConfig};

    #[test]
    fn off_by_default_and_read_when_written() {
        assert_eq!(parse(ONE_VIP, ORIGIN).unwrap().telemetry, None);
        let text = format!(
            "{ONE_VIP}\n[telemetry]\nlisten = \"127.0.0.1:9901\"\nadmin = true\nrefresh = \"2s\"\n\
             auth = {{ user = \"ops\", password = \"s3cret\" }}\n"
        );
        assert_eq!(
            parse(&text, ORIGIN).unwrap().telemetry,
            Some(TelemetryConfig {
                listen: "127.0.0.1:9901".parse().unwrap(),
                auth: Some(Credentials {
                    user: "ops".into(),
                    password: "s3cret".into()
                }),
                admin: true,
                refresh: Duration::from_secs(2),
            })
        );
    }

    #[test]
    fn bad_settings_name_their_line_and_key() {
        let base = format!(
            "{ONE_VIP}[telemetry]\nlisten = \"127.0.0.1:9901\"\n\
             auth = {{ user = \"ops\", password = \"pw\" }}\nadmin = false\n"
        );
        let line = |needle: &str| {
            base.lines()
                .position(|l| l.contains(needle))
                .expect("in the base")
                + 1
        };
        for (from, to, at, field, fragment) in [
            (
                "\"127.0.0.1:9901\"",
                "\"localhost\"",
                "\"localhost\"",
                "telemetry.listen",
                "is not an address and port",
            ),
            (
                "user = \"ops\"",
                "user = \"o:ps\"",
                "\"o:ps\"",
                "telemetry.auth.user",
                "no ':'",
            ),
            (
                "password = \"pw\"",
                "password = \"\"",
                "\"\"",
                "telemetry.auth.password",
                "empty",
            ),
        ] {
            assert_error_at(&base, (from, to), (line(from), at), field, fragment);
        }
        let no_auth = base.replace("auth = { user = \"ops\", password = \"pw\" }\n", "");
        let admin_line = no_auth.lines().position(|l| l == "admin = false").unwrap() + 1;
        assert_error_at(
            &no_auth,
            ("admin = false", "admin = true"),
            (admin_line, "true"),
            "telemetry.admin",
            "needs telemetry.auth",
        );
    }

    #[test]
    fn the_password_is_never_printed() {
        let creds = Credentials {
            user: "ops".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{creds:?}").contains("s3cret"));
    }
}
