//! A pool's HTTP balancing (`balance`, `hash_key`, `cookie`) and its backends' cookie ids,
//! checked into a [`PoolBalance`].

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::{Checked, Validator};
use crate::config::raw::{RawCookie, RawPool};
use crate::config::BackendConfig;
use crate::l7::balance::{
    cookie_id_problem, cookie_name_problem, Algorithm, BalanceKind, CookiePersistence, HashKey,
    PoolBalance,
};

impl Validator<'_> {
    /// The `balance`, `hash_key` and `cookie` of `pool`, at key path `field`.
    pub(super) fn pool_balance(&self, pool: &RawPool, field: &str) -> Checked<PoolBalance> {
        let kind = match &pool.balance {
            None => BalanceKind::RoundRobin,
            Some(b) => self.word(b, format_args!("{field}.balance"))?,
        };
        let algorithm = match (kind, &pool.hash_key) {
            (BalanceKind::Hash, Some(key)) => {
                Algorithm::Hash(self.word::<HashKey>(key, format_args!("{field}.hash_key"))?)
            }
            (BalanceKind::Hash, None) => {
                let span = pool.balance.as_ref().map(Spanned::span).unwrap_or_default();
                return Err(self.error(
                    span,
                    format_args!("{field}.balance"),
                    "\"hash\" needs a hash_key: \"source\", \"uri\", \"header:NAME\" or \"cookie:NAME\"",
                ));
            }
            (_, Some(key)) => {
                return Err(self.error(
                    key.span(),
                    format_args!("{field}.hash_key"),
                    format!(
                        "only means something with balance = \"hash\", not {:?}",
                        kind.as_str()
                    ),
                ));
            }
            (BalanceKind::RoundRobin, None) => Algorithm::RoundRobin,
            (BalanceKind::LeastConn, None) => Algorithm::LeastConn,
        };
        let cookie = match &pool.cookie {
            None => None,
            Some(c) => Some(self.cookie_persistence(c.get_ref(), &format!("{field}.cookie"))?),
        };
        Ok(PoolBalance { algorithm, cookie })
    }

    fn cookie_persistence(&self, raw: &RawCookie, field: &str) -> Checked<CookiePersistence> {
        let name = self.text_field(
            &raw.name,
            format_args!("{field}.name"),
            "cookie name",
            cookie_name_problem,
        )?;
        Ok(CookiePersistence {
            name,
            insert: raw.insert.unwrap_or(true),
            nocache: raw.nocache.unwrap_or(false),
            indirect: raw.indirect.unwrap_or(false),
        })
    }

    /// A backend's `cookie` (its persistence id), at key path `field`.
    pub(super) fn backend_cookie(
        &self,
        raw: Option<&Spanned<String>>,
        field: &str,
    ) -> Checked<Option<String>> {
        raw.map(|id| {
            self.text_field(
                id,
                format_args!("{field}.cookie"),
                "cookie id",
                cookie_id_problem,
            )
        })
        .transpose()
    }
}

/// The cookie ids of one pool's backends so far: id -> index in the pool.
#[derive(Default)]
pub(super) struct CookieIds(HashMap<String, usize>);

impl CookieIds {
    /// Adds backend `index`, at key path `field`; `span` is its `cookie` if it has one, else
    /// the backend's table. A backend may only name an id when its pool `persists` by cookie.
    pub(super) fn add(
        &mut self,
        v: &Validator<'_>,
        (backend, index, span): (&BackendConfig, usize, Range<usize>),
        field: &str,
        persists: bool,
    ) -> Checked<()> {
        if backend.cookie.is_some() && !persists {
            return Err(v.error(
                span,
                format_args!("{field}.cookie"),
                "a backend's cookie id needs the pool's cookie table (e.g. cookie = { name = \"SERVERID\" })",
            ));
        }
        let id = backend.cookie_id();
        if let Some(first) = self.0.insert(id.clone(), index) {
            let what = if backend.cookie.is_some() {
                format!("{field}.cookie")
            } else {
                field.to_owned()
            };
            return Err(v.error(
                span,
                what,
                format!("cookie id {id:?} is already backends[{first}]'s"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{assert_error_at, with, ORIGIN};
    use super::super::super::{parse, PoolConfig};
    use super::*;
    use crate::l7::balance::default_cookie_id;

    /// One pool with two backends, one per line (lines 5 and 6), and no VIP.
    const POOL: &str = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [{ address = "10.0.2.11", port = 80 },
            { address = "10.0.2.12", port = 80 }]
"#;

    fn pool(text: &str) -> PoolConfig {
        parse(text, ORIGIN).unwrap().pools.remove(0)
    }

    #[test]
    fn defaults_to_round_robin_without_persistence() {
        let p = pool(POOL);
        assert_eq!(p.balance, PoolBalance::default());
        assert_eq!(p.balance.algorithm, Algorithm::RoundRobin);
        assert_eq!(p.backends[0].cookie, None);
        let derived = default_cookie_id(p.backends[0].socket_addr());
        assert_eq!(p.backends[0].cookie_id(), derived);
    }

    #[test]
    fn balance_words() {
        let cases = [
            ("balance = \"leastconn\"\n", Algorithm::LeastConn),
            ("balance = \"RoundRobin\"\n", Algorithm::RoundRobin),
            (
                "balance = \"hash\"\nhash_key = \"source\"\n",
                Algorithm::Hash(HashKey::Source),
            ),
            (
                "balance = \"hash\"\nhash_key = \"header:X-User\"\n",
                Algorithm::Hash(HashKey::Header("x-user".parse().unwrap())),
            ),
            (
                "balance = \"hash\"\nhash_key = \"cookie:uid\"\n",
                Algorithm::Hash(HashKey::Cookie("uid".into())),
            ),
        ];
        for (lines, expected) in cases {
            let text = with(
                POOL,
                "name = \"web\"\n",
                &format!("name = \"web\"\n{lines}"),
            );
            assert_eq!(pool(&text).balance.algorithm, expected, "{lines}");
        }
    }

    #[test]
    fn cookie_persistence_and_ids() {
        let text = with(
            POOL,
            "name = \"web\"\n",
            "name = \"web\"\ncookie = { name = \"SERVERID\", nocache = true, indirect = true }\n",
        );
        let text = with(&text, "port = 80 }", "port = 80, cookie = \"s1\" }");
        let p = pool(&text);
        assert_eq!(
            p.balance.cookie,
            Some(CookiePersistence {
                name: "SERVERID".into(),
                insert: true,
                nocache: true,
                indirect: true,
            })
        );
        assert_eq!(p.backends[0].cookie_id(), "s1");
        let derived = default_cookie_id(p.backends[1].socket_addr());
        assert_eq!(p.backends[1].cookie, None);
        assert_eq!(p.backends[1].cookie_id(), derived);
        let passive = with(&text, "nocache = true", "insert = false");
        assert!(!pool(&passive).balance.cookie.unwrap().insert);
    }

    #[test]
    fn errors_name_the_field() {
        let name = "name = \"web\"\n";
        let f = "pool[0] (\"web\")";
        // The added lines start on line 5.
        let cases: [(&str, (usize, &str), &str, &str); 7] = [
            (
                "balance = \"random\"\n",
                (5, "\"random\""),
                "balance",
                "invalid balance \"random\": expected \"roundrobin\", \"leastconn\" or \"hash\"",
            ),
            (
                "balance = \"hash\"\n",
                (5, "\"hash\""),
                "balance",
                "\"hash\" needs a hash_key",
            ),
            (
                "balance = \"hash\"\nhash_key = \"body\"\n",
                (6, "\"body\""),
                "hash_key",
                "invalid hash_key \"body\"",
            ),
            (
                "balance = \"hash\"\nhash_key = \"header:a b\"\n",
                (6, "\"header"),
                "hash_key",
                "invalid hash_key",
            ),
            (
                "hash_key = \"uri\"\n",
                (5, "\"uri\""),
                "hash_key",
                "only means something with balance = \"hash\", not \"roundrobin\"",
            ),
            (
                "cookie = { name = \"A;B\" }\n",
                (5, "\"A;B\""),
                "cookie.name",
                "invalid cookie name \"A;B\"",
            ),
            (
                "cookie = { name = \"\" }\n",
                (5, "\"\""),
                "cookie.name",
                "must be 1 to 64 characters",
            ),
        ];
        for (lines, at, key, fragment) in cases {
            assert_error_at(
                POOL,
                (name, &format!("{name}{lines}")),
                at,
                &format!("{f}.{key}"),
                fragment,
            );
        }
    }

    #[test]
    fn cookie_table_is_checked_by_serde() {
        let text = with(
            POOL,
            "name = \"web\"\n",
            "name = \"web\"\ncookie = { nmae = \"X\" }\n",
        );
        let message = parse(&text, ORIGIN).unwrap_err().to_string();
        assert!(message.starts_with("balancer.toml:5:"), "{message}");
        assert!(message.contains("unknown field `nmae`"), "{message}");
    }

    #[test]
    fn backend_cookie_ids_are_checked() {
        let f = "pool[0] (\"web\").backends";
        let persist = with(
            POOL,
            "name = \"web\"\n",
            "name = \"web\"\ncookie = { name = \"SERVERID\" }\n",
        );
        // Backends are on lines 6 and 7 now.
        assert_error_at(
            &persist,
            ("port = 80 }", "port = 80, cookie = \"s 1\" }"),
            (6, "\"s 1\""),
            &format!("{f}[0].cookie"),
            "invalid cookie id \"s 1\": must be 1 to 64 characters of letters, digits and -._~",
        );
        let twice = with(&persist, "port = 80 }", "port = 80, cookie = \"s1\" }");
        assert_error_at(
            &twice,
            ("port = 80 }]", "port = 80, cookie = \"s1\" }]"),
            (7, "\"s1\""),
            &format!("{f}[1].cookie"),
            "cookie id \"s1\" is already backends[0]'s",
        );
        // An explicit id equal to another backend's derived one.
        let derived = default_cookie_id("10.0.2.11:80".parse().unwrap());
        assert_error_at(
            &persist,
            (
                "port = 80 }]",
                &format!("port = 80, cookie = \"{derived}\" }}]"),
            ),
            (7, &format!("\"{derived}\"")),
            &format!("{f}[1].cookie"),
            "is already backends[0]'s",
        );
        assert_error_at(
            POOL,
            ("port = 80 }", "port = 80, cookie = \"s1\" }"),
            (5, "\"s1\""),
            &format!("{f}[0].cookie"),
            "needs the pool's cookie table",
        );
    }
}
