//! A `[[vip]]`'s `mode` and its `[[vip.rule]]` tables: an HTTP-mode VIP's routing rules,
//! built by [`crate::l7::rules`] from the values written, each refusal pointing at its
//! value (`vip[0] ("www").rule[2] ("static").path_regex[0]`).

use std::collections::HashMap;

use toml::Spanned;

use super::super::raw::{HeaderValues, RawRule, RawVip, Values};
use super::{name_problem, Checked, Validator};
use crate::config::{PoolConfig, Protocol, VipMode};
use http::HeaderName;

use crate::l7::rules::{header_name, BadValue, Condition, Rule, Test};

impl Validator<'_> {
    /// The `mode` of `vip` (key path `field`, transport `protocol`) and its rules: an HTTP
    /// VIP is a TCP one; only an HTTP VIP has rules.
    pub(super) fn vip_mode(
        &self,
        vip: &RawVip,
        field: &str,
        protocol: Protocol,
        pools: &[PoolConfig],
    ) -> Checked<(VipMode, Vec<Rule>)> {
        let mode = match &vip.mode {
            None => VipMode::default(),
            Some(m) => self.word(m, format_args!("{field}.mode"))?,
        };
        match mode {
            VipMode::Http if protocol != Protocol::Tcp => Err(self.error(
                vip.protocol.span(),
                format_args!("{field}.protocol"),
                format!("an HTTP-mode VIP (mode = \"http\") needs protocol = \"tcp\", not \"{protocol}\""),
            )),
            VipMode::L4 if !vip.rule.is_empty() => Err(self.error(
                vip.rule[0].span(),
                format_args!("{field}.rule[0]"),
                "rules route HTTP requests: they need mode = \"http\" on the VIP (it is an L4 VIP)",
            )),
            VipMode::L4 => Ok((mode, Vec::new())),
            VipMode::Http => {
                let mut names = HashMap::new();
                let rules = vip
                    .rule
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| self.rule(rule, (i, field), pools, &mut names))
                    .collect::<Checked<_>>()?;
                Ok((mode, rules))
            }
        }
    }

    /// Rule `index` of the VIP at key path `vip`; `names` holds the names of the rules
    /// before it (name -> index).
    fn rule(
        &self,
        raw: &Spanned<RawRule>,
        (index, vip): (usize, &str),
        pools: &[PoolConfig],
        names: &mut HashMap<String, usize>,
    ) -> Checked<Rule> {
        let rule = raw.get_ref();
        let field = match &rule.name {
            Some(name) => format!("{vip}.rule[{index}] ({:?})", name.get_ref()),
            None => format!("{vip}.rule[{index}]"),
        };
        let name = match &rule.name {
            None => format!("rule {}", index + 1),
            Some(name) => {
                let name = self.text_field(
                    name,
                    format_args!("{field}.name"),
                    "rule name",
                    name_problem,
                )?;
                if let Some(first) = names.get(&name) {
                    return Err(self.error(
                        rule.name.as_ref().map_or(raw.span(), Spanned::span),
                        format_args!("{field}.name"),
                        format!("duplicate rule name {name:?} (already the name of rule[{first}])"),
                    ));
                }
                names.insert(name.clone(), index);
                name
            }
        };
        let pool = self.known_pool(&rule.pool, &field, pools)?;
        let mut conditions = Vec::new();
        for (kind, negate, values) in rule.lists() {
            if let Some(values) = values {
                let key = condition_key(kind.as_str(), negate);
                let test = self.test(values, &format!("{field}.{key}"), |v| Test::new(kind, v))?;
                conditions.push(Condition { negate, test });
            }
        }
        for (kind, negate, table) in rule.header_tables() {
            if let Some(table) = table {
                let key = format!("{field}.{}", condition_key(kind.as_str(), negate));
                for (name, values) in self.header_table(table, &key)? {
                    let field = format!("{key}.{}", toml_key(name.get_ref().as_str()));
                    let name = header_name(name.get_ref()).expect("checked by header_table");
                    let test = self.test(values, &field, |v| Test::header(kind, name, v))?;
                    conditions.push(Condition { negate, test });
                }
            }
        }
        Ok(Rule {
            name,
            pool,
            conditions,
        })
    }

    /// The entries of a header table at key path `field`: not empty, each a valid header
    /// name, none twice (names are case-insensitive).
    fn header_table<'t>(
        &self,
        table: &'t HeaderValues,
        field: &str,
    ) -> Checked<Vec<(&'t Spanned<String>, &'t Values)>> {
        if table.get_ref().is_empty() {
            return Err(self.error(
                table.span(),
                field,
                "an empty table matches nothing: give a header and its values, e.g. { \"X-Env\" = [\"beta\"] }",
            ));
        }
        let mut seen: Vec<(HeaderName, &str)> = Vec::new();
        for name in table.get_ref().keys() {
            let key = format!("{field}.{}", toml_key(name.get_ref()));
            let header =
                header_name(name.get_ref()).map_err(|why| self.error(name.span(), &key, why))?;
            if let Some((_, first)) = seen.iter().find(|(h, _)| *h == header) {
                return Err(self.error(
                    name.span(),
                    key,
                    format!("header {first:?} is already listed (header names are case-insensitive): put the values in one list"),
                ));
            }
            seen.push((header, name.get_ref()));
        }
        Ok(table.get_ref().iter().collect())
    }

    /// The test `build` makes of `values` (key path `field`), its refusal pointing at the
    /// value refused.
    fn test(
        &self,
        values: &Values,
        field: &str,
        build: impl FnOnce(&[&str]) -> Result<Test, BadValue>,
    ) -> Checked<Test> {
        let list = values.get_ref();
        let texts: Vec<&str> = list.iter().map(|v| v.get_ref().as_str()).collect();
        build(&texts).map_err(|e| match e.index {
            Some(i) => self.error(list[i].span(), format_args!("{field}[{i}]"), e.why),
            None => self.error(values.span(), field, e.why),
        })
    }
}

/// A condition's key in the file: `path_prefix`, or its twin `not_path_prefix`.
fn condition_key(key: &str, negate: bool) -> String {
    if negate {
        format!("not_{key}")
    } else {
        key.to_owned()
    }
}

/// `key` as a key path shows it: bare when TOML allows, else quoted.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests;
