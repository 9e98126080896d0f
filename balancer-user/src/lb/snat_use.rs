//! How full each backend's SNAT ports are, estimated from the data plane's counters: a new
//! flow's first probe falls on a port a hash chose, so over a window the share of first
//! probes that found their port taken is the share of ports in use. Sampled by the agent
//! every few seconds ([`Balancer::sample_snat_use`]), shown per backend in `status`, and
//! logged when it passes [`WARN_AT`] (and again when it is back under [`CLEAR_AT`]).

use balancer_common::FlowStats;

use super::Balancer;
use crate::dataplane::{Maps, MapsError};

/// A backend's ports are said to be short from this share in use.
pub const WARN_AT: f64 = 0.7;
/// ... and no longer once under this one.
pub const CLEAR_AT: f64 = 0.5;
/// Fewer new flows than this in a window say nothing.
const MIN_SAMPLES: u64 = 20;

/// One backend's estimate and the counters it was last taken from.
#[derive(Clone, Debug, Default)]
pub struct SnatUse {
    /// (first probes, of them taken) at the last sample.
    last: (u64, u64),
    /// The share of ports in use over the last window with enough new flows.
    pub(super) estimate: Option<f64>,
    warned: bool,
}

impl SnatUse {
    /// Takes the window since the last sample from `stats`; returns `Some(true)` when the
    /// estimate just passed [`WARN_AT`], `Some(false)` when it just fell under [`CLEAR_AT`].
    fn sample(&mut self, stats: &FlowStats) -> Option<bool> {
        let now = (stats.snat_first_probes, stats.snat_first_taken);
        let probes = now.0.saturating_sub(self.last.0);
        let taken = now.1.saturating_sub(self.last.1);
        self.last = now;
        if probes < MIN_SAMPLES {
            return None;
        }
        let share = taken as f64 / probes as f64;
        self.estimate = Some(share);
        if !self.warned && share >= WARN_AT {
            self.warned = true;
            return Some(true);
        }
        if self.warned && share < CLEAR_AT {
            self.warned = false;
            return Some(false);
        }
        None
    }
}

impl<M: Maps> Balancer<M> {
    /// Samples every backend's SNAT use (see the module's doc), logging those that became
    /// short of ports or are no longer.
    ///
    /// # Errors
    /// When the counters cannot be read.
    pub fn sample_snat_use(&mut self) -> Result<(), MapsError> {
        for (pool, p) in &mut self.pools {
            for b in &mut p.backends {
                let stats = self.maps.backend_stats(b.id)?;
                match b.snat_use.sample(&stats) {
                    Some(true) => log::warn!(
                        "pool {pool}: backend {}: about {:.0}% of its SNAT ports are in use \
                         (new flows' first probes); new flows will start to find none: widen \
                         nat.port_range or add nat.source_addresses",
                        b.addr,
                        b.snat_use.estimate.unwrap_or_default() * 100.0
                    ),
                    Some(false) => log::info!(
                        "pool {pool}: backend {}: SNAT ports in use back to about {:.0}%",
                        b.addr,
                        b.snat_use.estimate.unwrap_or_default() * 100.0
                    ),
                    None => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(probes: u64, taken: u64) -> FlowStats {
        FlowStats {
            snat_first_probes: probes,
            snat_first_taken: taken,
            ..FlowStats::default()
        }
    }

    #[test]
    fn windows_estimate_the_share_in_use_and_say_when_it_crosses() {
        let mut used = SnatUse::default();
        assert_eq!(used.sample(&stats(10, 9)), None, "too few to say");
        assert_eq!(used.estimate, None);
        assert_eq!(
            used.sample(&stats(110, 39)),
            None,
            "30% of the window's 100"
        );
        assert_eq!(used.estimate, Some(0.3));
        assert_eq!(used.sample(&stats(210, 119)), Some(true), "80%: short");
        assert_eq!(used.sample(&stats(310, 179)), None, "60%: still said");
        assert_eq!(used.sample(&stats(410, 219)), Some(false), "40%: no longer");
        assert_eq!(
            used.sample(&stats(415, 224)),
            None,
            "a quiet window keeps the estimate"
        );
        assert_eq!(used.estimate, Some(0.4));
    }
}
