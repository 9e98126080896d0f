//! `[[vrrp_sync_group]]`: instances of the file, each in one group at most, whose
//! configurations [`vrrp::SyncGroup::new`] accepts together.

use std::collections::HashMap;

use toml::Spanned;

use super::super::{defined, Checked, Names, Validator};
use crate::config::raw::RawSyncGroup;
use crate::vrrp::{self, InstanceConfig, SyncGroupConfig};

impl Validator<'_> {
    /// Every `[[vrrp_sync_group]]`; `instances` are the configuration's instances.
    pub(in crate::config::validate) fn vrrp_sync_groups(
        &self,
        raw: &[Spanned<RawSyncGroup>],
        instances: &[InstanceConfig],
    ) -> Checked<Vec<SyncGroupConfig>> {
        let mut names = Names::new();
        // Instance -> (group index, group name, index in its `instances`, line).
        let mut members: HashMap<String, (usize, String, usize, usize)> = HashMap::new();
        let mut groups = Vec::with_capacity(raw.len());
        for (gi, table) in raw.iter().enumerate() {
            let group = table.get_ref();
            let field = format!("vrrp_sync_group[{gi}] ({:?})", group.name.get_ref());
            let name = self.new_name(
                &mut names,
                ("sync group", "vrrp_sync_group"),
                gi,
                &group.name,
                &field,
            )?;
            let list = group.instances.get_ref();
            if list.is_empty() {
                return Err(self.error(
                    group.instances.span(),
                    format_args!("{field}.instances"),
                    "at least one instance is required (names of [[vrrp]] instances)",
                ));
            }
            for (k, member) in list.iter().enumerate() {
                self.group_member(member, (gi, &name, k, &field), instances, &mut members)?;
            }
            let notify = self.notify(group.notify.as_ref(), &field)?;
            let config = SyncGroupConfig {
                name,
                instances: list.iter().map(|m| m.get_ref().clone()).collect(),
                host_requirements: self
                    .notify_requirement(notify.as_ref(), group.notify.as_ref(), &field)
                    .into_iter()
                    .collect(),
                notify,
                tracking_weight: group.sync_group_tracking_weight.unwrap_or(false),
            };
            if let Err(e) = config.build(instances) {
                // A member with a weighted track: point at the member.
                let member = match &e {
                    vrrp::ConfigError::SyncGroupTrackWeight { member, .. } => {
                        list.iter().position(|m| m.get_ref() == member)
                    }
                    _ => None,
                };
                return Err(match member {
                    Some(k) => self.error(
                        list[k].span(),
                        format_args!("{field}.instances[{k}]"),
                        format!("{e} (set it in this group, or give the track weight 0)"),
                    ),
                    None => self.error(table.span(), field, e.to_string()),
                });
            }
            groups.push(config);
        }
        Ok(groups)
    }

    /// Entry `k` of group `gi`'s `instances`: an instance of the file, in no group yet.
    fn group_member(
        &self,
        member: &Spanned<String>,
        (gi, group, k, field): (usize, &str, usize, &str),
        instances: &[InstanceConfig],
        members: &mut HashMap<String, (usize, String, usize, usize)>,
    ) -> Checked<()> {
        let name = member.get_ref();
        let field = format!("{field}.instances[{k}]");
        if !instances.iter().any(|i| i.name() == name) {
            let known = defined(
                "VRRP instances",
                "vrrp",
                instances.iter().map(InstanceConfig::name),
            );
            return Err(self.error(
                member.span(),
                field,
                format!("unknown VRRP instance {name:?} ({known})"),
            ));
        }
        if let Some((other, other_name, other_k, line)) = members.get(name) {
            let message = if *other == gi {
                format!("{name:?} is already listed as instances[{other_k}]")
            } else {
                format!(
                    "instance {name:?} is already in vrrp_sync_group[{other}] ({other_name:?}) \
                     on line {line}: an instance belongs to at most one sync group"
                )
            };
            return Err(self.error(member.span(), field, message));
        }
        let line = self.line(&member.span());
        members.insert(name.clone(), (gi, group.to_owned(), k, line));
        Ok(())
    }
}
