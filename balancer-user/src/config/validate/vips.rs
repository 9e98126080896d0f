//! `[[vip]]`: each VIP's name, address, port, protocol, scheduler and ring size, its pool
//! (which must exist), its mode (`vip_mode`, with `l7.rs`) and forwarding
//! (`forwarding.rs`), and that no two VIPs share a name or a listener.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use balancer_common::{MAX_RING_SIZE, MAX_VIPS};
use toml::Spanned;

use super::super::raw::{Int, RawVip};
use super::{addresses, defined, Checked, Names, Validator};
use crate::config::{
    check_vip_address, is_prime, AllDownPolicy, PoolConfig, Protocol, Scheduler, TunnelConfig,
    VipConfig, DEFAULT_RING_SIZE,
};

impl Validator<'_> {
    pub(super) fn vips(
        &self,
        raw: Vec<Spanned<RawVip>>,
        pools: &[PoolConfig],
        tunnel: &TunnelConfig,
    ) -> Checked<Vec<VipConfig>> {
        let total = raw.len();
        let max = MAX_VIPS as usize;
        let mut seen = VipsSeen::default();
        let mut vips = Vec::with_capacity(total.min(max));
        for (vi, vip) in raw.into_iter().enumerate() {
            let span = vip.span();
            let field = format!("vip[{vi}] ({:?})", vip.get_ref().name.get_ref());
            if vi >= max {
                return Err(self.error(
                    span,
                    field,
                    format!("too many VIPs: {total} defined, at most {max} are supported"),
                ));
            }
            vips.push(self.vip(
                vip.get_ref(),
                (vi, span, &field),
                (pools, tunnel),
                &mut seen,
            )?);
        }
        Ok(vips)
    }

    /// `[[vip]]` number `index`, written at `span`, key path `field`; `seen` holds what the
    /// VIPs before it took.
    fn vip(
        &self,
        vip: &RawVip,
        (index, span, field): (usize, Range<usize>, &str),
        (pools, tunnel): (&[PoolConfig], &TunnelConfig),
        seen: &mut VipsSeen,
    ) -> Checked<VipConfig> {
        let name = self.new_name(&mut seen.names, ("VIP", "vip"), index, &vip.name, field)?;
        let address = self.ip(&vip.address, format_args!("{field}.address"))?;
        let port = self.port(&vip.port, format_args!("{field}.port"))?;
        let protocol: Protocol = self.word(&vip.protocol, format_args!("{field}.protocol"))?;
        let scheduler = match &vip.scheduler {
            None => Scheduler::Maglev,
            Some(s) => self.word(s, format_args!("{field}.scheduler"))?,
        };
        let ring_size = match &vip.ring_size {
            None => DEFAULT_RING_SIZE,
            Some(r) => self.ring_size(r, format!("{field}.ring_size"))?,
        };
        let pool = self.vip_pool(vip, &name, field, pools)?;
        let (mode, rules) = self.vip_mode(vip, field, protocol, pools)?;
        let (forwarding, encapsulation) = self.forwarding(
            vip,
            field,
            (port, mode),
            pools.iter().find(|p| p.name == pool),
            tunnel,
        )?;
        // Whether it is one of the host's own is checked once every address is known.
        check_vip_address((address, port, protocol), mode, None).map_err(|e| {
            self.error(
                vip.address.span(),
                format_args!("{field}.address"),
                e.to_string(),
            )
        })?;
        self.places.borrow_mut().vips.push(addresses::VipPlaces {
            address: vip.address.span(),
            ring_size: vip.ring_size.as_ref().map_or(span.clone(), Spanned::span),
        });

        let key = (address, port, protocol);
        if let Some((first, first_name, line)) = seen.listeners.get(&key) {
            return Err(self.error(
                span,
                field,
                format!(
                    "{}/{protocol} is already used by vip[{first}] ({first_name:?}) on line {line}",
                    SocketAddr::new(address, port)
                ),
            ));
        }
        seen.listeners
            .insert(key, (index, name.clone(), self.line(&span)));

        let on_all_down = match &vip.on_all_down {
            None => AllDownPolicy::default(),
            Some(p) => self.word(p, format_args!("{field}.on_all_down"))?,
        };
        Ok(VipConfig {
            name,
            address,
            port,
            protocol,
            scheduler,
            ring_size,
            pool,
            on_all_down,
            forwarding,
            encapsulation,
            mode,
            rules,
        })
    }

    /// `ring_size`: a prime no larger than the data plane's rings.
    fn ring_size(&self, raw: &Spanned<Int>, field: String) -> Checked<u32> {
        let v = raw.get_ref().0;
        match u32::try_from(v) {
            Ok(n) if n <= MAX_RING_SIZE && is_prime(n) => Ok(n),
            Ok(n) if n <= MAX_RING_SIZE => Err(self.error(
                raw.span(),
                field,
                format!(
                    "{n} is not prime (Maglev needs a prime ring size, e.g. {DEFAULT_RING_SIZE})"
                ),
            )),
            _ => Err(self.error(
                raw.span(),
                field,
                format!("{v} is out of range: must be a prime no larger than {MAX_RING_SIZE}"),
            )),
        }
    }

    /// A VIP's `pool`: a pool that exists, and no other pool is called like the VIP.
    fn vip_pool(
        &self,
        vip: &RawVip,
        name: &str,
        field: &str,
        pools: &[PoolConfig],
    ) -> Checked<String> {
        let pool_name = vip.pool.get_ref();
        self.known_pool(&vip.pool, field, pools)?;
        if name != pool_name && pools.iter().any(|p| p.name == name) {
            return Err(self.error(
                vip.name.span(),
                format_args!("{field}.name"),
                format!(
                    "{name:?} is also the name of a pool, and this VIP uses pool {pool_name:?}: \
                     `backend` commands naming {name:?} would be ambiguous (a VIP may share \
                     its name only with its own pool)"
                ),
            ));
        }
        Ok(pool_name.clone())
    }

    /// The `pool` of the table at key path `field` (a VIP or a rule): a defined pool.
    pub(super) fn known_pool(
        &self,
        raw: &Spanned<String>,
        field: &str,
        pools: &[PoolConfig],
    ) -> Checked<String> {
        let pool = raw.get_ref();
        if !pools.iter().any(|p| &p.name == pool) {
            let known = defined("pools", "pool", pools.iter().map(|p| p.name.as_str()));
            return Err(self.error(
                raw.span(),
                format_args!("{field}.pool"),
                format!("unknown pool {pool:?} ({known})"),
            ));
        }
        Ok(pool.clone())
    }
}

/// What the VIPs checked so far took.
#[derive(Default)]
pub(super) struct VipsSeen {
    names: Names,
    /// listener -> (index, name, line of the vip)
    listeners: HashMap<(IpAddr, u16, Protocol), (usize, String, usize)>,
}
