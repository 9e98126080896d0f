//! What the host must hold before an instance starts: the checks the configuration file
//! cannot make ([`HostRequirement`]), and the address each instance's adverts leave from.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;

use super::{ConfigError, HostCheck, HostRequirement, InstanceConfig};
use crate::sys;

/// Why the VRRP instances could not start; each names the setting or instance at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A host requirement does not hold: `FILE:LINE:COLUMN: FIELD: what must hold`.
    #[error("{requirement}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Host {
        requirement: HostRequirement,
        detail: Option<String>,
    },
    #[error("vrrp {instance:?}: IPv6 instances need the IPv6 data plane, which is not built yet; use IPv4 addresses")]
    Ipv6 { instance: String },
    #[error("vrrp {instance:?}: interface {interface}: {source}")]
    Interface {
        instance: String,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vrrp {instance:?}: {source}")]
    Config {
        instance: String,
        #[source]
        source: ConfigError,
    },
    #[error("vrrp sync group {group:?}: {source}")]
    Group {
        group: String,
        #[source]
        source: ConfigError,
    },
}

/// Checks every instance's host requirements, before the agent changes anything, so that a
/// configuration the host cannot run is refused whole.
///
/// # Errors
/// The first requirement that does not hold.
pub fn check_host(instances: &[InstanceConfig]) -> Result<(), StartError> {
    instances.iter().try_for_each(|i| prepare(i).map(drop))
}

/// Checks `instance`'s host requirements and returns the address its adverts leave from:
/// `unicast_source`, or the interface's primary address (its first that is not one of the
/// instance's virtual addresses: keepalived's choice).
///
/// # Errors
/// The first requirement that does not hold.
pub fn prepare(instance: &InstanceConfig) -> Result<Ipv4Addr, StartError> {
    if instance.is_ipv6() {
        return Err(StartError::Ipv6 {
            instance: instance.name().to_owned(),
        });
    }
    let mut source = match instance.unicast_source {
        Some(IpAddr::V4(source)) => Some(source),
        _ => None,
    };
    for requirement in &instance.host_requirements {
        let failed = |detail: Option<String>| StartError::Host {
            requirement: requirement.clone(),
            detail,
        };
        match &requirement.check {
            HostCheck::Interface { interface } => {
                sys::ifindex(interface).map_err(|e| failed(Some(e.to_string())))?;
            }
            HostCheck::PrimaryAddress { interface, .. } => {
                let own =
                    sys::ipv4_addresses(interface).map_err(|e| failed(Some(e.to_string())))?;
                let primary = own.iter().map(|&(a, _)| a).find(|a| {
                    !instance
                        .addresses
                        .iter()
                        .any(|v| v.address == IpAddr::V4(*a))
                });
                source = Some(primary.ok_or_else(|| failed(None))?);
            }
            HostCheck::UnicastSource { interface, address } => {
                let own =
                    sys::ipv4_addresses(interface).map_err(|e| failed(Some(e.to_string())))?;
                if !own.iter().any(|&(a, _)| IpAddr::V4(a) == *address) {
                    return Err(failed(None));
                }
            }
            HostCheck::Owner {
                interface,
                addresses,
            } => {
                let own =
                    sys::ipv4_addresses(interface).map_err(|e| failed(Some(e.to_string())))?;
                let missing: Vec<String> = addresses
                    .iter()
                    .filter(|v| !own.iter().any(|&(a, _)| IpAddr::V4(a) == v.address))
                    .map(ToString::to_string)
                    .collect();
                if !missing.is_empty() {
                    return Err(failed(Some(format!("missing: {}", missing.join(", ")))));
                }
            }
            HostCheck::Executable { program } => {
                let executable = std::fs::metadata(program)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable {
                    return Err(failed(None));
                }
            }
        }
    }
    source.ok_or_else(|| StartError::Interface {
        instance: instance.name().to_owned(),
        interface: instance.interface.clone(),
        source: std::io::Error::other("no IPv4 address to send adverts from"),
    })
}
