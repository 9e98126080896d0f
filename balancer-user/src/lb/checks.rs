//! What a VIP or a backend must be before it is added, beyond its own fields: addresses the
//! data plane can serve and forward to ([`crate::config::check_vip_address`] and the rest,
//! the file's checks in the same words), and rings large enough for their pools.

use std::net::SocketAddr;

use super::{Balancer, BalancerError};
use crate::{
    config::{
        check_l4_backend, check_ring_size, check_vip_address, family, Forwarding, Host, VipConfig,
        VipMode,
    },
    dataplane::Maps,
};

impl<M: Maps> Balancer<M> {
    /// Whether `vip` can be added: its address, and for an L4 VIP the backends its pool
    /// already has (none on this host, and no more than its ring has slots). `host`: this
    /// host's addresses, when the caller read them (`None`: only what the addresses
    /// themselves tell).
    ///
    /// # Errors
    ///
    /// Why it cannot.
    pub fn check_new_vip(&self, vip: &VipConfig, host: Option<&Host>) -> Result<(), BalancerError> {
        check_vip_address((vip.address, vip.port, vip.protocol), vip.mode, host).map_err(|e| {
            BalancerError::Invalid {
                what: "VIP address",
                why: e.to_string(),
            }
        })?;
        if vip.address.is_ipv6() && vip.forwarding == Forwarding::Tunnel {
            return Err(BalancerError::Invalid {
                what: "forwarding",
                why: format!(
                    "VIP {:?} is IPv6 and \"tunnel\" encapsulates in IPv4 only: use \"nat\" \
                     or \"dsr\" for an IPv6 VIP",
                    vip.name
                ),
            });
        }
        if vip.address.is_ipv6() && vip.mode == VipMode::Http {
            return Err(BalancerError::Invalid {
                what: "VIP address",
                why: format!(
                    "VIP {:?} is IPv6, and HTTP-mode VIPs are IPv4 only for now",
                    vip.name
                ),
            });
        }
        if vip.forwarding == Forwarding::Tunnel && self.settings.tunnel_src == 0 {
            return Err(BalancerError::Invalid {
                what: "forwarding",
                why: format!(
                    "VIP {:?}: \"tunnel\" needs tunnel.source (the outer source address of \
                     encapsulated packets) in the configuration file",
                    vip.name
                ),
            });
        }
        let Some(pool) = self
            .pools
            .get(&vip.pool)
            .filter(|_| vip.mode == VipMode::L4)
        else {
            return Ok(());
        };
        if let Some(b) = pool.backends.first() {
            if b.addr.is_ipv4() != vip.address.is_ipv4() {
                return Err(BalancerError::Invalid {
                    what: "VIP address",
                    why: format!(
                        "VIP {:?} is an {} address, and its pool {:?} has {} backends ({}): \
                         an L4 VIP and its pool must be of one family",
                        vip.name,
                        family(vip.address),
                        vip.pool,
                        family(b.addr.ip()),
                        b.addr
                    ),
                });
            }
        }
        for b in &pool.backends {
            check_l4_backend(b.addr.ip(), host).map_err(|e| BalancerError::Invalid {
                what: "pool",
                why: format!("{:?} has backend {}: {e}", vip.pool, b.addr),
            })?;
            check_untranslated_port(vip, b.addr)?;
        }
        check_ring_size(vip.ring_size, pool.backends.len(), &vip.pool).map_err(|why| {
            BalancerError::Invalid {
                what: "ring size",
                why,
            }
        })
    }

    /// Whether backend `addr` can be added to the pool `target` names: when the pool
    /// serves L4 VIPs, not on this host (`host`, as for [`Balancer::check_new_vip`]), and
    /// not more backends than their rings have slots.
    ///
    /// # Errors
    ///
    /// Why it cannot.
    pub fn check_new_backend(
        &self,
        target: &str,
        addr: SocketAddr,
        host: Option<&Host>,
    ) -> Result<(), BalancerError> {
        let pool = self.pool_name(target)?;
        if let Some(other) = self.pools[&pool]
            .backends
            .iter()
            .find(|b| b.addr.is_ipv4() != addr.is_ipv4())
        {
            return Err(BalancerError::Invalid {
                what: "backend address",
                why: format!(
                    "{addr} is an {} address, and pool {pool:?} has {} backends ({}): the \
                     backends of a pool must be of one family",
                    family(addr.ip()),
                    family(other.addr.ip()),
                    other.addr
                ),
            });
        }
        // Every VIP of the balancer is an L4 one (the proxy has the HTTP VIPs).
        let mut vips = self.vips.values().filter(|v| v.config.pool == pool);
        let Some(first) = vips.next() else {
            return Ok(());
        };
        if let Some(vip) = self
            .vips
            .values()
            .find(|v| v.config.pool == pool && v.config.address.is_ipv4() != addr.is_ipv4())
        {
            return Err(BalancerError::Invalid {
                what: "backend address",
                why: format!(
                    "{addr} is an {} address, and pool {pool:?} serves {} VIP {:?}: an L4 \
                     VIP and its pool must be of one family",
                    family(addr.ip()),
                    family(vip.config.address),
                    vip.config.name
                ),
            });
        }
        check_l4_backend(addr.ip(), host).map_err(|e| BalancerError::Invalid {
            what: "backend address",
            why: format!(
                "{addr}: {e}; pool {pool:?} serves L4 VIP {:?}",
                first.config.name
            ),
        })?;
        let backends = self.pools[&pool].backends.len() + 1;
        for vip in std::iter::once(first).chain(vips) {
            check_untranslated_port(&vip.config, addr)?;
            check_ring_size(vip.config.ring_size, backends, &pool).map_err(|why| {
                BalancerError::Invalid {
                    what: "backend",
                    why: format!("{addr}: ring size of VIP {:?}: {why}", vip.config.name),
                }
            })?;
        }
        Ok(())
    }
}

/// A direct-server-return or tunnel VIP sends packets to its backends with its own port:
/// each must listen there.
fn check_untranslated_port(vip: &VipConfig, backend: SocketAddr) -> Result<(), BalancerError> {
    let how = match vip.forwarding {
        Forwarding::Nat => return Ok(()),
        Forwarding::Dsr => "by direct server return",
        Forwarding::Tunnel => "through a tunnel",
    };
    if backend.port() != vip.port {
        return Err(BalancerError::Invalid {
            what: "backend port",
            why: format!(
                "{backend}: VIP {:?} forwards {how}, which keeps the VIP's port: its backends \
                 must listen on port {}",
                vip.name, vip.port
            ),
        });
    }
    Ok(())
}
