//! `/metrics` of flow sync (`[sync]`): per peer, what was sent and received, what was
//! refused and why, and how long ago the peer was last heard and its last full resync
//! arrived.

use super::{Kind, Plain, Writer};
use crate::api::{Status, SyncPeerStatus};

/// A gauge of seconds per peer, absent while there is no value: name, help, value.
type Age = (
    &'static str,
    &'static str,
    fn(&SyncPeerStatus) -> Option<f64>,
);

pub(super) fn flow_sync(w: &mut Writer, status: &Status) {
    let Some(sync) = &status.sync else {
        return;
    };
    w.family(
        "balancer_sync_sending",
        Kind::Gauge,
        "1 while this node is the Master that sends its flows, 0 while it receives.",
    );
    w.sample(
        "balancer_sync_sending",
        &[],
        u8::from(sync.role == "sending"),
    );
    w.family(
        "balancer_sync_queued_datagrams",
        Kind::Gauge,
        "Datagrams waiting for the rate bound.",
    );
    w.sample("balancer_sync_queued_datagrams", &[], sync.queued);
    let peers = &sync.peers;
    let plain: [Plain<SyncPeerStatus>; 11] = [
        ("balancer_sync_flows_sent_total", Kind::Counter, "Flow records sent to the peer.", |p| p.flows_sent),
        ("balancer_sync_datagrams_sent_total", Kind::Counter, "Datagrams sent to the peer.", |p| p.datagrams_sent),
        ("balancer_sync_flows_received_total", Kind::Counter, "Flow records received from the peer.", |p| p.flows_received),
        ("balancer_sync_flows_written_total", Kind::Counter, "Received flows written into the connection tables.", |p| p.flows_written),
        ("balancer_sync_flows_unknown_total", Kind::Counter, "Received flows skipped: their VIP or backend is unknown here.", |p| p.unknown),
        ("balancer_sync_auth_failures_total", Kind::Counter, "Datagrams from the peer's address whose HMAC was wrong (forged, or another key).", |p| p.auth_failures),
        ("balancer_sync_stale_total", Kind::Counter, "Datagrams refused as stale: an older boot of the peer, seen before, or older than the window.", |p| p.stale),
        ("balancer_sync_malformed_total", Kind::Counter, "Authentic datagrams that were malformed, or cut short.", |p| p.malformed),
        ("balancer_sync_lost_total", Kind::Counter, "Datagrams missing from the peer's sequence.", |p| p.lost),
        ("balancer_sync_resync_requests_sent_total", Kind::Counter, "Full resyncs asked for.", |p| p.resync_requests_sent),
        ("balancer_sync_resync_requests_received_total", Kind::Counter, "Full resyncs the peer asked for.", |p| p.resync_requests_received),
    ];
    for (family, kind, help, value) in plain {
        w.each((family, kind, help), peers, |w, name, p| {
            w.sample(name, &[("peer", &p.address)], value(p));
        });
    }
    let ages: [Age; 2] = [
        (
            "balancer_sync_lag_seconds",
            "Seconds since the peer was last heard (a Master sends at least once per interval).",
            |p| p.lag_secs,
        ),
        (
            "balancer_sync_last_full_resync_age_seconds",
            "Seconds since the peer's last full resync arrived.",
            |p| p.last_full_resync_secs,
        ),
    ];
    for (family, help, value) in ages {
        w.each((family, Kind::Gauge, help), peers, |w, name, p| {
            if let Some(v) = value(p) {
                w.sample(name, &[("peer", &p.address)], v);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::api::{SyncPeerStatus, SyncStatus};
    use crate::telemetry::metrics::render;
    use crate::telemetry::metrics::tests::{check, status};

    #[test]
    fn sync_families_per_peer() {
        let mut s = status(1, 1);
        assert!(
            !render(&s).contains("balancer_sync_"),
            "no [sync]: no family"
        );
        s.sync = Some(SyncStatus {
            role: "receiving".into(),
            queued: 3,
            peers: vec![SyncPeerStatus {
                address: "10.0.2.11:7471".into(),
                flows_received: 60,
                flows_written: 58,
                unknown: 2,
                auth_failures: 5,
                lag_secs: Some(0.25),
                ..SyncPeerStatus::default()
            }],
            ..SyncStatus::default()
        });
        let families = check(&render(&s));
        let value = |family: &str| {
            let (_, samples) = &families[family];
            assert_eq!(samples.len(), 1, "{family}: {samples:?}");
            samples[0].2
        };
        assert!((value("balancer_sync_sending") - 0.0).abs() < f64::EPSILON);
        for (family, want) in [
            ("balancer_sync_queued_datagrams", 3.0),
            ("balancer_sync_flows_received_total", 60.0),
            ("balancer_sync_flows_written_total", 58.0),
            ("balancer_sync_flows_unknown_total", 2.0),
            ("balancer_sync_auth_failures_total", 5.0),
            ("balancer_sync_lag_seconds", 0.25),
        ] {
            assert!((value(family) - want).abs() < 1e-9, "{family}");
        }
        let (_, samples) = &families["balancer_sync_auth_failures_total"];
        assert_eq!(samples[0].1["peer"], "10.0.2.11:7471");
        // No full resync yet: no sample.
        assert!(families["balancer_sync_last_full_resync_age_seconds"]
            .1
            .is_empty());
    }
}
