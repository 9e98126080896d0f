//! The "Flow sync" section of `balancer status`: this node's role and newest round, and
//! per peer what was sent, received and written, what was refused, and how old the last
//! datagram and the last full resync are.

use std::fmt::Write as _;

use crate::api::Status;

/// Seconds as "0.3s", or "-" for never.
fn ago(secs: Option<f64>) -> String {
    secs.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

pub(super) fn render_sync(status: &Status) -> Option<String> {
    let sync = status.sync.as_ref()?;
    let mut out = format!("{} on {}", sync.role, sync.local.as_deref().unwrap_or("-"));
    if let Some(r) = &sync.last_round {
        let _ = write!(
            out,
            "; last round {} ago: {} records{} in {:.1}ms, {} flows known to the peers",
            ago(Some(r.age_secs)),
            r.records,
            if r.full { " (full)" } else { "" },
            r.took_secs * 1000.0,
            r.flows
        );
    }
    for (what, n) in [
        ("datagrams queued", sync.queued),
        ("dropped from a full queue", sync.queue_drops),
        ("from strangers", sync.strangers),
        ("records ignored while Master", sync.ignored_while_master),
        ("records dropped", sync.dropped),
    ] {
        if n > 0 {
            let _ = write!(out, "; {n} {what}");
        }
    }
    if let Some(e) = &sync.last_error {
        let _ = write!(out, "; writing failed: {e}");
    }
    let _ = write!(
        out,
        "\n{:<22} {:>10} {:>10} {:>10} {:>8} {:>7} {:>9} {:>9} {:>6} {:>6} {:>9}",
        "PEER",
        "SENT",
        "RECEIVED",
        "WRITTEN",
        "UNKNOWN",
        "LAG",
        "LAST FULL",
        "AUTH FAIL",
        "STALE",
        "LOST",
        "MALFORMED"
    );
    for p in &sync.peers {
        let _ = write!(
            out,
            "\n{:<22} {:>10} {:>10} {:>10} {:>8} {:>7} {:>9} {:>9} {:>6} {:>6} {:>9}",
            p.address,
            p.flows_sent,
            p.flows_received,
            p.flows_written,
            p.unknown,
            ago(p.lag_secs),
            ago(p.last_full_resync_secs),
            p.auth_failures,
            p.stale,
            p.lost,
            p.malformed
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SyncPeerStatus, SyncRoundStatus, SyncStatus};

    #[test]
    fn role_round_and_peers() {
        let mut status = Status::default();
        assert_eq!(render_sync(&status), None);
        status.sync = Some(SyncStatus {
            role: "sending".into(),
            local: Some("10.0.2.11:7471".into()),
            last_round: Some(SyncRoundStatus {
                age_secs: 0.25,
                took_secs: 0.0012,
                full: true,
                records: 60,
                flows: 60,
            }),
            strangers: 2,
            peers: vec![SyncPeerStatus {
                address: "10.0.2.12:7471".into(),
                flows_sent: 60,
                auth_failures: 5,
                lag_secs: Some(0.4),
                ..SyncPeerStatus::default()
            }],
            ..SyncStatus::default()
        });
        let text = render_sync(&status).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "sending on 10.0.2.11:7471; last round 0.2s ago: 60 records (full) in 1.2ms, 60 \
             flows known to the peers; 2 from strangers"
        );
        assert!(lines[1].starts_with("PEER"), "{text}");
        let peer: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            peer,
            [
                "10.0.2.12:7471",
                "60",
                "0",
                "0",
                "0",
                "0.4s",
                "-",
                "5",
                "0",
                "0",
                "0"
            ]
        );
    }
}
