//! Rates over the last seconds, from the deltas of the counters in successive statuses
//! (the data plane keeps totals only).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::api::{Counters, Status};

/// Packets, bytes, and new flows (or, for an HTTP VIP, requests) per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub packets: f64,
    pub bytes: f64,
    pub flows: f64,
}

type Totals = [u64; 3];

fn totals(c: &Counters) -> Totals {
    [
        c.packets + c.reply_packets,
        c.bytes + c.reply_bytes,
        c.new_flows,
    ]
}

/// The key of a VIP's rate.
#[must_use]
pub fn vip_key(name: &str) -> String {
    format!("vip/{name}")
}

/// The key of a backend's rate (and remembered weight).
#[must_use]
pub fn backend_key(pool: &str, backend: &str) -> String {
    format!("backend/{pool}/{backend}")
}

/// The key of an HTTP VIP's rate (requests in [`Rate::flows`]).
#[must_use]
pub fn http_key(name: &str) -> String {
    format!("http/{name}")
}

/// The statuses of the last `window`, reduced to their counters.
pub struct Rates {
    window: Duration,
    samples: VecDeque<(Instant, HashMap<String, Totals>)>,
    /// Each backend's last weight above 0: what "enable" on the page gives a drained one.
    weights: HashMap<String, u32>,
}

impl Rates {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Rates {
            window,
            samples: VecDeque::new(),
            weights: HashMap::new(),
        }
    }

    /// Keeps `status`'s counters, taken at `now`, and forgets samples older than the
    /// window.
    pub fn record(&mut self, now: Instant, status: &Status) {
        let mut sample = HashMap::new();
        for v in &status.vips {
            sample.insert(vip_key(&v.config.name), totals(&v.counters));
        }
        for p in &status.pools {
            for b in &p.backends {
                let key = backend_key(&p.name, &b.socket_addr().to_string());
                if b.weight > 0 {
                    self.weights.insert(key.clone(), b.weight);
                }
                sample.insert(key, totals(&b.counters));
            }
        }
        for h in &status.http {
            let t = [h.requests, h.bytes_in + h.bytes_out, h.requests];
            sample.insert(http_key(&h.name), t);
        }
        self.samples.push_back((now, sample));
        while self.samples.len() > 1 && now.duration_since(self.samples[0].0) > self.window {
            self.samples.pop_front();
        }
    }

    /// The rate of `key` between the oldest and the newest sample; `None` with fewer than
    /// two samples of it or less than a tenth of a second between them.
    #[must_use]
    pub fn rate(&self, key: &str) -> Option<Rate> {
        let (newest_at, newest) = self.samples.back()?;
        let (oldest_at, oldest) = self.samples.iter().find(|(_, s)| s.contains_key(key))?;
        let secs = newest_at.duration_since(*oldest_at).as_secs_f64();
        if secs < 0.1 {
            return None;
        }
        let (new, old) = (newest.get(key)?, oldest.get(key)?);
        // A counter that went back (a backend deleted and added again) counts from 0.
        #[expect(clippy::cast_precision_loss, reason = "rates are shown rounded")]
        let per_second = |i: usize| new[i].checked_sub(old[i]).unwrap_or(new[i]) as f64 / secs;
        Some(Rate {
            packets: per_second(0),
            bytes: per_second(1),
            flows: per_second(2),
        })
    }

    /// Seconds the rates span (for the page to say so).
    #[must_use]
    pub fn span(&self) -> Option<Duration> {
        let newest = self.samples.back()?.0;
        Some(newest.duration_since(self.samples.front()?.0))
    }

    /// The backend's last weight above 0, if it had one.
    #[must_use]
    pub fn last_weight(&self, key: &str) -> Option<u32> {
        self.weights.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{backend_key, Rate, Rates};
    use crate::telemetry::metrics::tests::status;

    #[test]
    fn rates_are_deltas_over_the_window() {
        let mut rates = Rates::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut s = status(1, 2);
        let key = backend_key("pool0", "10.0.0.0:80");
        rates.record(t0, &s);
        assert_eq!(rates.rate(&key), None, "one sample is no rate");
        s.pools[0].backends[0].counters.packets += 100;
        s.pools[0].backends[0].counters.reply_bytes += 4000;
        s.pools[0].backends[0].counters.new_flows += 10;
        rates.record(t0 + Duration::from_secs(2), &s);
        assert_eq!(
            rates.rate(&key),
            Some(Rate {
                packets: 50.0,
                bytes: 2000.0,
                flows: 5.0
            })
        );
        // Far later: the old samples go, the rate is over the last interval only.
        rates.record(t0 + Duration::from_secs(30), &s);
        rates.record(t0 + Duration::from_secs(32), &s);
        assert_eq!(rates.rate(&key).map(|r| r.packets), Some(0.0));
        assert!(rates.span().unwrap() <= Duration::from_secs(12));
    }

    #[test]
    fn a_drained_backend_remembers_its_weight() {
        let mut rates = Rates::new(Duration::from_secs(10));
        let mut s = status(1, 2);
        s.pools[0].backends[1].weight = 4;
        s.pools[0].backends[1].state = "active".into();
        let key = backend_key("pool0", "10.0.0.1:80");
        rates.record(Instant::now(), &s);
        s.pools[0].backends[1].weight = 0;
        rates.record(Instant::now(), &s);
        assert_eq!(rates.last_weight(&key), Some(4));
    }
}
