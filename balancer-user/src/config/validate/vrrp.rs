//! `[[vrrp]]`: VRRP instances, checked against each other, the VIPs they track and
//! [`vrrp::Config::validate`], and built into the [`InstanceConfig`]s the agent runs, each with
//! what the agent must check of the host at start; `[[vrrp_sync_group]]`, the instances that
//! fail over together, in `sync_group`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

use super::{defined, Checked, Names, Validator};
use crate::config::position::line_col;
use crate::config::raw::{Int, RawTrack, RawVrrp};
use crate::config::{interface_name_problem, not_a_host, ConfigError, VipConfig};
use crate::vrrp::{
    self, HostCheck, HostRequirement, InstanceConfig, NotifyCommand, Track, TrackTarget,
    V3Checksum, Version, VirtualAddress,
};

/// keepalived's accepted track weights (`vrrp_track.c`), as [`vrrp::Config::validate`] checks.
const TRACK_WEIGHTS: RangeInclusive<i64> = -253..=253;
/// Gratuitous ARPs per burst: keepalived takes 1 upward; more than this is a flood.
const GARP_REPEATS: RangeInclusive<i64> = 1..=255;
/// Longest `garp_master_delay`.
const MAX_GARP_MASTER_DELAY: Duration = Duration::from_hours(1);
/// The address owner's priority (RFC 9568 section 5.2.4).
const PRIORITY_OWNER: u8 = 255;

/// What the instances checked so far took.
#[derive(Default)]
struct InstancesSeen {
    names: Names,
    /// (interface, VRID, IPv6) -> (index, name, line of its `vrid`).
    vrids: HashMap<(String, u8, bool), (usize, String, usize)>,
    /// Virtual address -> (index, name, index in its `addresses`).
    addresses: HashMap<IpAddr, (usize, String, usize)>,
}

/// An instance's `[[vrrp]]` table and its key path (`vrrp[0] ("vi_1")`).
struct Instance<'r> {
    raw: &'r RawVrrp,
    span: Range<usize>,
    field: String,
}

impl Instance<'_> {
    fn key(&self, key: impl fmt::Display) -> String {
        format!("{}.{key}", self.field)
    }
}

impl Validator<'_> {
    /// Every `[[vrrp]]`; `vips` are the configuration's VIPs (tracks name them).
    pub(super) fn vrrp_instances(
        &self,
        raw: &[Spanned<RawVrrp>],
        vips: &[VipConfig],
    ) -> Checked<Vec<InstanceConfig>> {
        let mut seen = InstancesSeen::default();
        let mut instances = Vec::with_capacity(raw.len());
        for (index, table) in raw.iter().enumerate() {
            let instance = Instance {
                raw: table.get_ref(),
                span: table.span(),
                field: format!("vrrp[{index}] ({:?})", table.get_ref().name.get_ref()),
            };
            instances.push(self.vrrp_instance(&instance, index, vips, &mut seen)?);
        }
        Ok(instances)
    }

    /// `[[vrrp]]` number `index`.
    fn vrrp_instance(
        &self,
        instance: &Instance<'_>,
        index: usize,
        vips: &[VipConfig],
        seen: &mut InstancesSeen,
    ) -> Checked<InstanceConfig> {
        let raw = instance.raw;
        let name = self.new_name(
            &mut seen.names,
            ("VRRP instance", "vrrp"),
            index,
            &raw.name,
            &instance.field,
        )?;
        let interface = self.text_field(
            &raw.interface,
            instance.key("interface"),
            "interface name",
            interface_name_problem,
        )?;
        let vrid = self.bounded(&raw.vrid, instance.key("vrid"), "vrid", 1..=255, "")?;
        let addresses = self.vrrp_addresses(instance, index, &name, &mut seen.addresses)?;
        let ipv6 = addresses.first().is_some_and(|a| a.address.is_ipv6());
        let vrid = u8::try_from(vrid).expect("vrid is in 1..=255");
        self.unique_vrid(instance, index, (&name, &interface, vrid, ipv6), seen)?;
        let (unicast_source, unicast_peers) = self.vrrp_unicast(instance, ipv6)?;

        let unspecified = if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        // keepalived's defaults, and the version that carries the family.
        let mut params = vrrp::Config::new(name, vrid, unicast_source.unwrap_or(unspecified));
        if let Some(p) = &raw.priority {
            let note = " (255 = address owner; 0 is reserved for a Master that resigns)";
            let p = self.bounded(p, instance.key("priority"), "priority", 1..=255, note)?;
            params.priority = u8::try_from(p).expect("priority is in 1..=255");
        }
        if let Some(v) = &raw.version {
            params.version = match v.get_ref().0 {
                2 => Version::V2,
                3 => Version::V3,
                n => {
                    return Err(self.error(
                        v.span(),
                        instance.key("version"),
                        format!(
                            "version {n} is not 2 or 3 (2 is keepalived's default, IPv6 needs 3)"
                        ),
                    ))
                }
            };
        }
        if let Some(d) = &raw.advert_interval {
            params.advert_interval = self.any_duration(d, instance.key("advert_interval"))?;
        }
        params.preempt = !raw.nopreempt.as_ref().is_some_and(|n| *n.get_ref());
        if let Some(d) = &raw.preempt_delay {
            params.preempt_delay = self.any_duration(d, instance.key("preempt_delay"))?;
        }
        if let Some(d) = &raw.garp_master_delay {
            params.garp_master_delay = self.duration(
                d,
                instance.key("garp_master_delay"),
                Duration::ZERO..=MAX_GARP_MASTER_DELAY,
                "0s (no second burst) and 1h",
            )?;
        }
        if let Some(r) = &raw.garp_master_repeat {
            let key = instance.key("garp_master_repeat");
            let r = self.bounded(r, key, "garp_master_repeat", GARP_REPEATS, "")?;
            params.garp_master_repeat = u32::try_from(r).expect("garp_master_repeat is positive");
        }
        let v3_checksum = self.v3_checksum(instance, params.version, ipv6)?;
        let tracks = self.vrrp_tracks(instance, vips)?;
        params.tracks = tracks
            .iter()
            .map(|(target, weight, reverse)| Track {
                name: target.to_string(),
                weight: *weight,
                reverse: *reverse,
            })
            .collect();
        let notify = self.notify(raw.notify.as_ref(), &instance.field)?;
        params
            .validate()
            .map_err(|e| self.params_error(instance, &params, &e))?;

        let mut config = InstanceConfig {
            params,
            interface,
            addresses,
            unicast_source,
            unicast_peers,
            v3_checksum,
            tracks: tracks.into_iter().map(|(target, ..)| target).collect(),
            notify,
            host_requirements: Vec::new(),
        };
        config.host_requirements = self.instance_host_requirements(instance, &config);
        Ok(config)
    }

    /// `addresses`: at least one `ADDRESS/PREFIX`, all of one family, none a virtual address
    /// already (here or in another instance).
    fn vrrp_addresses(
        &self,
        instance: &Instance<'_>,
        index: usize,
        name: &str,
        taken: &mut HashMap<IpAddr, (usize, String, usize)>,
    ) -> Checked<Vec<VirtualAddress>> {
        let list = instance.raw.addresses.get_ref();
        if list.is_empty() {
            return Err(self.error(
                instance.raw.addresses.span(),
                instance.key("addresses"),
                "at least one address is required (\"ADDRESS/PREFIX\", e.g. \"10.0.1.100/24\")",
            ));
        }
        let mut addresses: Vec<VirtualAddress> = Vec::with_capacity(list.len());
        for (ai, raw) in list.iter().enumerate() {
            let field = instance.key(format_args!("addresses[{ai}]"));
            let text = raw.get_ref();
            let address: VirtualAddress = text.parse().map_err(|e| {
                self.error(raw.span(), &field, format!("invalid address {text:?}: {e}"))
            })?;
            let ip = address.address;
            if let Some(why) = not_a_unicast_host(ip) {
                let message = format!("{ip} is {why}, not a virtual address");
                return Err(self.error(raw.span(), field, message));
            }
            if let Some(first) = addresses
                .first()
                .filter(|f| f.address.is_ipv6() != ip.is_ipv6())
            {
                return Err(self.error(
                    raw.span(),
                    field,
                    format!(
                        "{ip} is {} but addresses[0] is {}: an instance's addresses are of one \
                         family (use another [[vrrp]] for the other)",
                        family(ip),
                        family(first.address)
                    ),
                ));
            }
            if let Some((other, other_name, other_ai)) = taken.get(&ip) {
                let already = if *other == index {
                    format!("addresses[{other_ai}]")
                } else {
                    format!("a virtual address of vrrp[{other}] ({other_name:?})")
                };
                return Err(self.error(
                    raw.span(),
                    field,
                    format!("{ip} is already {already}: an address belongs to one instance, once"),
                ));
            }
            taken.insert(ip, (index, name.to_owned(), ai));
            addresses.push(address);
        }
        Ok(addresses)
    }

    /// A VRID is used once per interface and family (RFC 9568 section 7.3: the virtual MAC
    /// holds it; keepalived refuses a second instance as well).
    fn unique_vrid(
        &self,
        instance: &Instance<'_>,
        index: usize,
        (name, interface, vrid, ipv6): (&str, &str, u8, bool),
        seen: &mut InstancesSeen,
    ) -> Checked<()> {
        let span = instance.raw.vrid.span();
        let key = (interface.to_owned(), vrid, ipv6);
        if let Some((first, first_name, line)) = seen.vrids.get(&key) {
            return Err(self.error(
                span,
                instance.key("vrid"),
                format!(
                    "vrid {vrid} is already used on interface {interface:?} for {} by \
                     vrrp[{first}] ({first_name:?}) on line {line} (a VRID may be used once \
                     per interface and address family)",
                    if ipv6 { "IPv6" } else { "IPv4" }
                ),
            ));
        }
        let line = self.line(&span);
        seen.vrids.insert(key, (index, name.to_owned(), line));
        Ok(())
    }

    /// `unicast_source` and `unicast_peers`: of the instance's family, a source only with
    /// peers, no peer twice or the source itself.
    fn vrrp_unicast(
        &self,
        instance: &Instance<'_>,
        ipv6: bool,
    ) -> Checked<(Option<IpAddr>, Vec<IpAddr>)> {
        let raw = instance.raw;
        let source = raw
            .unicast_source
            .as_ref()
            .map(|s| self.unicast_address(s, instance.key("unicast_source"), ipv6))
            .transpose()?;
        if let (Some(s), true) = (&raw.unicast_source, raw.unicast_peers.is_empty()) {
            return Err(self.error(
                s.span(),
                instance.key("unicast_source"),
                format!(
                    "unicast_source needs unicast_peers: without peers adverts go to the \
                     multicast group {} from the interface's own address",
                    if ipv6 { "ff02::12" } else { "224.0.0.18" }
                ),
            ));
        }
        let mut peers: Vec<IpAddr> = Vec::with_capacity(raw.unicast_peers.len());
        for (pi, peer) in raw.unicast_peers.iter().enumerate() {
            let field = instance.key(format_args!("unicast_peers[{pi}]"));
            let address = self.unicast_address(peer, &field, ipv6)?;
            let problem = if let Some(first) = peers.iter().position(|p| *p == address) {
                Some(format!(
                    "{address} is already listed as unicast_peers[{first}]"
                ))
            } else if source == Some(address) {
                Some(format!(
                    "{address} is the unicast_source: a peer is another router"
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(self.error(peer.span(), field, message));
            }
            peers.push(address);
        }
        Ok((source, peers))
    }

    /// A unicast source or peer: a host address of the instance's family.
    fn unicast_address(
        &self,
        raw: &Spanned<String>,
        field: impl fmt::Display,
        ipv6: bool,
    ) -> Checked<IpAddr> {
        let text = raw.get_ref();
        let address: IpAddr = text.parse().map_err(|_| {
            self.error(
                raw.span(),
                &field,
                format!("invalid address {text:?} (expected an IPv4 or IPv6 address)"),
            )
        })?;
        let problem = if let Some(why) = not_a_unicast_host(address) {
            Some(format!("{address} is {why}, not a router's address"))
        } else if address.is_ipv6() != ipv6 {
            Some(format!(
                "{address} is {} but the instance's addresses are {}",
                family(address),
                if ipv6 { "IPv6" } else { "IPv4" }
            ))
        } else {
            None
        };
        match problem {
            Some(message) => Err(self.error(raw.span(), field, message)),
            None => Ok(address),
        }
    }

    /// `v3_checksum`: a choice only for version 3 over IPv4.
    fn v3_checksum(
        &self,
        instance: &Instance<'_>,
        version: Version,
        ipv6: bool,
    ) -> Checked<V3Checksum> {
        let Some(raw) = &instance.raw.v3_checksum else {
            return Ok(V3Checksum::default());
        };
        let field = instance.key("v3_checksum");
        let checksum: V3Checksum = self.word(raw, &field)?;
        let why = match (version, ipv6) {
            (Version::V2, _) => "a VRRPv2 checksum never covers a pseudo-header",
            (Version::V3, true) => "an IPv6 checksum always covers the pseudo-header",
            (Version::V3, false) => return Ok(checksum),
        };
        Err(self.error(
            raw.span(),
            field,
            format!("v3_checksum applies to version 3 over IPv4 only: {why}"),
        ))
    }

    /// `track`: each entry watches one thing, no two the same thing; with its weight and
    /// `reverse`.
    fn vrrp_tracks(
        &self,
        instance: &Instance<'_>,
        vips: &[VipConfig],
    ) -> Checked<Vec<(TrackTarget, i16, bool)>> {
        let mut tracks: Vec<(TrackTarget, i16, bool)> = Vec::new();
        for (ti, raw) in instance.raw.track.iter().enumerate() {
            let field = instance.key(format_args!("track[{ti}]"));
            let target = self.track_target(raw, &field, vips)?;
            if let Some(first) = tracks.iter().position(|(t, ..)| *t == target) {
                return Err(self.error(
                    raw.span(),
                    field,
                    format!("{target} is already tracked by track[{first}] (track it once)"),
                ));
            }
            let track = raw.get_ref();
            let weight = match &track.weight {
                None => 0,
                Some(w) => {
                    let note = " (0 = Fault while down; > 0 added while up, < 0 taken while down)";
                    let key = format!("{field}.weight");
                    self.bounded(w, key, "weight", TRACK_WEIGHTS, note)?
                }
            };
            let weight = i16::try_from(weight).expect("weight is in -253..=253");
            tracks.push((target, weight, track.reverse.unwrap_or(false)));
        }
        Ok(tracks)
    }

    /// What one track watches: exactly one of `vip` (a VIP of the file), `interface` and
    /// `data_plane = true`.
    fn track_target(
        &self,
        raw: &Spanned<RawTrack>,
        field: &str,
        vips: &[VipConfig],
    ) -> Checked<TrackTarget> {
        let track = raw.get_ref();
        let data_plane = track.data_plane.as_ref();
        let set: Vec<(&str, Range<usize>)> = [
            ("vip", track.vip.as_ref().map(Spanned::span)),
            ("interface", track.interface.as_ref().map(Spanned::span)),
            ("data_plane", data_plane.map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| Some((key, span?)))
        .collect();
        match set.as_slice() {
            [] => {
                return Err(self.error(
                    raw.span(),
                    field,
                    "a track needs one of vip = \"NAME\", interface = \"IF\" or data_plane = true",
                ))
            }
            [(first, _), (second, span), ..] => {
                return Err(self.error(
                    span.clone(),
                    format_args!("{field}.{second}"),
                    format!("a track watches one thing: this one has {first} and {second} (write two tracks)"),
                ))
            }
            [_] => {}
        }
        if let Some(vip) = &track.vip {
            let name = vip.get_ref();
            if !vips.iter().any(|v| v.name == *name) {
                let known = defined("VIPs", "vip", vips.iter().map(|v| v.name.as_str()));
                return Err(self.error(
                    vip.span(),
                    format_args!("{field}.vip"),
                    format!("unknown VIP {name:?} ({known})"),
                ));
            }
            return Ok(TrackTarget::Vip(name.clone()));
        }
        if let Some(interface) = &track.interface {
            let key = format!("{field}.interface");
            let name = self.text_field(interface, key, "interface name", interface_name_problem)?;
            return Ok(TrackTarget::Interface(name));
        }
        match data_plane {
            Some(d) if !*d.get_ref() => Err(self.error(
                d.span(),
                format_args!("{field}.data_plane"),
                "data_plane = false tracks nothing: write data_plane = true, or leave the track out",
            )),
            _ => Ok(TrackTarget::DataPlane),
        }
    }

    /// What [`vrrp::Config::validate`] refused, at the key it names.
    fn params_error(
        &self,
        instance: &Instance<'_>,
        params: &vrrp::Config,
        e: &vrrp::ConfigError,
    ) -> ConfigError {
        let raw = instance.raw;
        let key = e.field();
        let at = if let vrrp::ConfigError::TrackWeight { track, .. } = e {
            // Tracks are in the order written: the n-th of `params.tracks` is `track[n]`.
            params
                .tracks
                .iter()
                .position(|t| t.name == *track)
                .and_then(|ti| {
                    let weight = raw.track.get(ti)?.get_ref().weight.as_ref()?;
                    Some((
                        weight.span(),
                        instance.key(format_args!("track[{ti}].weight")),
                    ))
                })
        } else {
            let span = match key {
                "vrid" => Some(raw.vrid.span()),
                "priority" => raw.priority.as_ref().map(Spanned::span),
                "advert_interval" => raw.advert_interval.as_ref().map(Spanned::span),
                "version" => raw.version.as_ref().map(Spanned::span),
                "preempt_delay" => raw.preempt_delay.as_ref().map(Spanned::span),
                _ => None,
            };
            span.map(|span| (span, instance.key(key)))
        };
        match at {
            Some((span, field)) => self.error(span, field, e.to_string()),
            None => self.error(instance.span.clone(), &instance.field, e.to_string()),
        }
    }

    /// A `notify` command.
    fn notify(&self, raw: Option<&Spanned<String>>, table: &str) -> Checked<Option<NotifyCommand>> {
        raw.map(|raw| {
            let text = raw.get_ref();
            NotifyCommand::parse(text).map_err(|e| {
                self.error(
                    raw.span(),
                    format_args!("{table}.notify"),
                    format!("invalid notify command {text:?}: {e}"),
                )
            })
        })
        .transpose()
    }

    /// What the agent must find on the host for `config`, each at the setting that needs it.
    fn instance_host_requirements(
        &self,
        instance: &Instance<'_>,
        config: &InstanceConfig,
    ) -> Vec<HostRequirement> {
        let raw = instance.raw;
        let interface = config.interface.clone();
        let at_interface = self.location(raw.interface.span(), instance.key("interface"));
        let mut requirements = vec![HostRequirement {
            location: at_interface.clone(),
            check: HostCheck::Interface {
                interface: interface.clone(),
            },
        }];
        requirements.push(match (config.unicast_source, &raw.unicast_source) {
            (Some(address), Some(s)) => HostRequirement {
                location: self.location(s.span(), instance.key("unicast_source")),
                check: HostCheck::UnicastSource {
                    interface: interface.clone(),
                    address,
                },
            },
            _ => HostRequirement {
                location: at_interface,
                check: HostCheck::PrimaryAddress {
                    interface: interface.clone(),
                    ipv6: config.is_ipv6(),
                },
            },
        });
        if let (PRIORITY_OWNER, Some(p)) = (config.params.priority, &raw.priority) {
            requirements.push(HostRequirement {
                location: self.location(p.span(), instance.key("priority")),
                check: HostCheck::Owner {
                    interface,
                    addresses: config.addresses.clone(),
                },
            });
        }
        requirements.extend(self.notify_requirement(
            config.notify.as_ref(),
            raw.notify.as_ref(),
            &instance.field,
        ));
        requirements
    }

    /// A notify command's program must be runnable.
    fn notify_requirement(
        &self,
        command: Option<&NotifyCommand>,
        raw: Option<&Spanned<String>>,
        table: &str,
    ) -> Option<HostRequirement> {
        Some(HostRequirement {
            location: self.location(raw?.span(), format_args!("{table}.notify")),
            check: HostCheck::Executable {
                program: command?.program().to_owned(),
            },
        })
    }

    /// `FILE:LINE:COLUMN: FIELD` of `span`, as errors start.
    pub(super) fn location(&self, span: Range<usize>, field: impl fmt::Display) -> String {
        let (line, column) = line_col(self.text, span.start);
        format!("{}:{line}:{column}: {field}", self.origin)
    }

    /// An integer `name` within `range`; `note` follows the range in the message.
    pub(super) fn bounded(
        &self,
        raw: &Spanned<Int>,
        field: impl fmt::Display,
        name: &str,
        range: RangeInclusive<i64>,
        note: &str,
    ) -> Checked<i64> {
        let v = raw.get_ref().0;
        if range.contains(&v) {
            return Ok(v);
        }
        let (lo, hi) = (range.start(), range.end());
        Err(self.error(
            raw.span(),
            field,
            format!("{name} {v} is out of range {lo}..={hi}{note}"),
        ))
    }

    /// A duration whose range a later check knows ([`vrrp::Config::validate`]).
    fn any_duration(&self, raw: &Spanned<String>, field: impl fmt::Display) -> Checked<Duration> {
        self.duration(raw, field, Duration::ZERO..=Duration::MAX, "any")
    }
}

/// Why `address` cannot be a router's or a virtual address, if it cannot.
fn not_a_unicast_host(address: IpAddr) -> Option<&'static str> {
    match address {
        _ if address.is_loopback() => Some("a loopback address"),
        IpAddr::V4(_) => not_a_host(address),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(_) => None,
    }
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    }
}

mod sync_group;
#[cfg(test)]
mod tests;
