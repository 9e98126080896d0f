//! The checks that need the whole file (and, when known, the host): each VIP's and
//! backend's address against the host's own and against what its VIPs' modes allow, the
//! SNAT source, the SNAT ports against the kernel's, and each ring against its pool.

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Range;

use super::{Checked, Validator};
use crate::config::{
    check_l4_backend, check_ring_size, check_source_address, check_vip_address, port_range_overlap,
    Config, ConfigError, Host, VipMode, DEFAULT_NAT_PORT_MAX, DEFAULT_NAT_PORT_MIN,
};

/// Where the values checked here were written.
#[derive(Default)]
pub(super) struct Places {
    pub(super) source_address: Range<usize>,
    /// `None`: not written (the default range).
    pub(super) port_range: Option<Range<usize>>,
    /// Each pool's backends' `address`, by pool and backend index.
    pub(super) backends: Vec<Vec<Range<usize>>>,
    /// By VIP index.
    pub(super) vips: Vec<VipPlaces>,
}

pub(super) struct VipPlaces {
    pub(super) address: Range<usize>,
    /// Its `ring_size`, or the VIP's table when it has none.
    pub(super) ring_size: Range<usize>,
}

impl Validator<'_> {
    /// The checks of this module on a `config` otherwise valid; returns the warnings.
    pub(super) fn addresses(&self, config: &Config) -> Checked<Vec<ConfigError>> {
        let places = self.places.borrow();
        // Addresses the agent puts on the host itself: a VRRP instance's, an HTTP VIP's.
        let ours = config
            .vrrp
            .iter()
            .flat_map(|i| &i.addresses)
            .filter_map(|a| match a.address {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .chain(
                config
                    .vips
                    .iter()
                    .filter(|v| v.mode == VipMode::Http)
                    .map(|v| v.address),
            );
        let host = self.host.map(|h| h.clone().with_ours(ours));
        let host = host.as_ref();

        if let Some(address) = config.nat.source_address {
            check_source_address(address, host).map_err(|e| {
                self.error(
                    places.source_address.clone(),
                    "nat.source_address",
                    e.to_string(),
                )
            })?;
        }
        let l4_pools: HashSet<&str> = config
            .vips
            .iter()
            .filter(|v| v.mode == VipMode::L4)
            .map(|v| v.pool.as_str())
            .collect();
        for (pi, pool) in config.pools.iter().enumerate() {
            if !l4_pools.contains(pool.name.as_str()) {
                continue;
            }
            for (bi, backend) in pool.backends.iter().enumerate() {
                check_l4_backend(backend.address, host).map_err(|e| {
                    self.error(
                        places.backends[pi][bi].clone(),
                        format_args!("pool[{pi}] ({:?}).backends[{bi}].address", pool.name),
                        format!("{e}; pool {:?} serves an L4 VIP", pool.name),
                    )
                })?;
            }
        }
        for (vi, vip) in config.vips.iter().enumerate() {
            let field = format!("vip[{vi}] ({:?})", vip.name);
            let at = &places.vips[vi];
            check_vip_address((vip.address, vip.port, vip.protocol), vip.mode, host).map_err(
                |e| {
                    self.error(
                        at.address.clone(),
                        format_args!("{field}.address"),
                        e.to_string(),
                    )
                },
            )?;
            let backends = config.pool(&vip.pool).map_or(0, |p| p.backends.len());
            if vip.mode == VipMode::L4 {
                check_ring_size(vip.ring_size, backends, &vip.pool).map_err(|why| {
                    self.error(at.ring_size.clone(), format_args!("{field}.ring_size"), why)
                })?;
            }
        }
        Ok(host
            .and_then(|h| self.port_range_warning(config, &places, h))
            .into_iter()
            .collect())
    }

    /// The warning of [`port_range_overlap`], at `nat.port_range` (or the file's start,
    /// for the default range).
    fn port_range_warning(
        &self,
        config: &Config,
        places: &Places,
        host: &Host,
    ) -> Option<ConfigError> {
        let (min, max) = (config.nat.port_min, config.nat.port_max);
        let why = port_range_overlap(min..=max, host)?;
        Some(match &places.port_range {
            Some(span) => self.error(span.clone(), "nat.port_range", why),
            None => {
                debug_assert_eq!((min, max), (DEFAULT_NAT_PORT_MIN, DEFAULT_NAT_PORT_MAX));
                self.error(0..0, "nat.port_range", format!("the default {why}"))
            }
        })
    }
}
