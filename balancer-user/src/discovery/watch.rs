//! The watch of one prefix as a state machine, without I/O: the keys known and the
//! revision they are current at, what to ask etcd next (list the prefix, or watch it from
//! the next revision), the backoff after failures, and the state `status` shows. The
//! tokio side (`etcd.rs`) does what [`Watch::next`] says and feeds the answers back.

use std::{collections::BTreeMap, time::Duration};

use super::value::{self, Backends, Discovered};

/// First wait after a failure; it doubles with each failure in a row, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between attempts while etcd cannot be reached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the watch stands (`status` shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not listed yet.
    Connecting,
    /// Listed, and watching for changes.
    Watching,
    /// The last attempt failed: the last known set stays in force.
    Unreachable,
}

impl State {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Watching => "watching",
            State::Unreachable => "unreachable",
        }
    }
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read every key under the prefix (and the revision that read is at).
    List,
    /// Watch the prefix for changes after `from - 1`.
    Watch { from: i64 },
}

/// A change one key went through, as a watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// What the caller should do with the outcome of an input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The backend set changed: send it.
    pub backends: Option<Backends>,
    /// Lines to log: keys whose values were refused, duplicate addresses, a state change.
    pub log: Vec<String>,
}

/// The watch of one prefix.
#[derive(Debug)]
pub struct Watch {
    /// The keys whose values are backends, as of `revision`.
    keys: BTreeMap<String, Discovered>,
    /// The etcd revision `keys` are current at (0 before the first list).
    revision: i64,
    /// A list must come first (at start, and after a failure or a compaction).
    must_list: bool,
    state: State,
    failures: u32,
    last_error: Option<String>,
    /// The set last sent (`None` before the first list).
    sent: Option<Backends>,
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    #[must_use]
    pub fn new() -> Self {
        Watch {
            keys: BTreeMap::new(),
            revision: 0,
            must_list: true,
            state: State::Connecting,
            failures: 0,
            last_error: None,
            sent: None,
        }
    }

    #[must_use]
    pub fn next(&self) -> Next {
        if self.must_list {
            Next::List
        } else {
            Next::Watch {
                from: self.revision + 1,
            }
        }
    }

    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    #[must_use]
    pub fn revision(&self) -> i64 {
        self.revision
    }

    #[must_use]
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The prefix was listed at `revision`: its keys replace those known.
    pub fn listed(
        &mut self,
        kvs: impl IntoIterator<Item = (String, Vec<u8>)>,
        revision: i64,
    ) -> Outcome {
        let mut log = Vec::new();
        self.keys.clear();
        for (key, value) in kvs {
            Self::put(&mut self.keys, key, &value, &mut log);
        }
        self.revision = revision;
        self.must_list = false;
        self.connected(&mut log);
        self.outcome(log)
    }

    /// A watch response: `changes` in the order etcd gave them, the prefix now at
    /// `revision`.
    pub fn changed(&mut self, changes: impl IntoIterator<Item = Change>, revision: i64) -> Outcome {
        let mut log = Vec::new();
        for change in changes {
            match change {
                Change::Put { key, value } => Self::put(&mut self.keys, key, &value, &mut log),
                Change::Delete { key } => {
                    self.keys.remove(&key);
                }
            }
        }
        self.revision = self.revision.max(revision);
        self.connected(&mut log);
        self.outcome(log)
    }

    /// The watch was cancelled because etcd compacted past the revision it starts at:
    /// list again (the keys known stay in force meanwhile).
    pub fn compacted(&mut self, compact_revision: i64) -> Outcome {
        self.must_list = true;
        Outcome {
            backends: None,
            log: vec![format!(
                "revision {} was compacted (etcd kept from {compact_revision}): listing again",
                self.revision + 1
            )],
        }
    }

    /// An attempt failed (connect, list, or a watch that broke): the last known set stays,
    /// the next attempt lists again after the returned wait.
    pub fn failed(&mut self, error: &str) -> (Duration, Outcome) {
        let mut log = Vec::new();
        if self.state != State::Unreachable {
            log.push(format!(
                "etcd unreachable ({error}): keeping the last known backends, retrying"
            ));
        }
        self.state = State::Unreachable;
        self.last_error = Some(error.to_owned());
        self.must_list = true;
        let wait = MIN_BACKOFF
            .saturating_mul(1 << self.failures.min(10))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        (
            wait,
            Outcome {
                backends: None,
                log,
            },
        )
    }

    fn connected(&mut self, log: &mut Vec<String>) {
        if self.state != State::Watching {
            log.push(format!("watching from revision {}", self.revision + 1));
        }
        self.state = State::Watching;
        self.failures = 0;
        self.last_error = None;
    }

    fn put(
        keys: &mut BTreeMap<String, Discovered>,
        key: String,
        value: &[u8],
        log: &mut Vec<String>,
    ) {
        match value::parse(value) {
            Ok(d) => {
                keys.insert(key, d);
            }
            Err(e) => {
                log.push(format!("key {key}: {e}: skipped"));
                // A key that held a backend and now holds garbage holds none.
                keys.remove(&key);
            }
        }
    }

    /// The set, if it differs from the one last sent.
    fn outcome(&mut self, mut log: Vec<String>) -> Outcome {
        let (set, skipped) = value::backends(&self.keys);
        for (key, why) in skipped {
            log.push(format!("key {key}: {why}: skipped"));
        }
        let backends = (self.sent.as_ref() != Some(&set)).then(|| {
            self.sent = Some(set.clone());
            set
        });
        Outcome { backends, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> (String, Vec<u8>) {
        (key.to_owned(), value.as_bytes().to_vec())
    }

    fn put(key: &str, value: &str) -> Change {
        Change::Put {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn set(entries: &[(&str, u32)]) -> Backends {
        entries
            .iter()
            .map(|(a, w)| (a.parse().unwrap(), *w))
            .collect()
    }

    #[test]
    fn lists_then_watches_from_the_next_revision_and_sends_only_changes() {
        let mut w = Watch::new();
        assert_eq!((w.next(), w.state()), (Next::List, State::Connecting));
        let out = w.listed([kv("/s/a", "10.0.2.11:80"), kv("/s/bad", "nope")], 7);
        assert_eq!(out.backends, Some(set(&[("10.0.2.11:80", 1)])));
        assert!(
            out.log.iter().any(|l| l.starts_with("key /s/bad: ")),
            "{:?}",
            out.log
        );
        assert_eq!(
            (w.next(), w.state()),
            (Next::Watch { from: 8 }, State::Watching)
        );

        let out = w.changed(
            [
                put("/s/b", r#"{"address":"10.0.2.12","port":80,"weight":3}"#),
                put("/s/a", r#"{"address":"10.0.2.11","port":80,"weight":2}"#),
            ],
            9,
        );
        assert_eq!(
            out.backends,
            Some(set(&[("10.0.2.11:80", 2), ("10.0.2.12:80", 3)]))
        );
        assert_eq!(w.next(), Next::Watch { from: 10 });
        // The same value again changes nothing to send.
        let out = w.changed(
            [put(
                "/s/b",
                r#"{"address":"10.0.2.12","port":80,"weight":3}"#,
            )],
            10,
        );
        assert_eq!(out.backends, None);
        // Deleted, and a key whose value turns bad: both leave.
        let out = w.changed(
            [Change::Delete { key: "/s/a".into() }, put("/s/b", "x")],
            12,
        );
        assert_eq!(out.backends, Some(Backends::new()));
        assert_eq!(w.next(), Next::Watch { from: 13 });
    }

    #[test]
    fn a_failure_keeps_the_set_backs_off_and_lists_again() {
        let mut w = Watch::new();
        let _ = w.listed([kv("/s/a", "10.0.2.11:80")], 3);
        let (first, out) = w.failed("connection refused");
        assert_eq!(out.backends, None);
        assert_eq!(out.log.len(), 1, "the state change is logged");
        assert_eq!((w.next(), w.state()), (Next::List, State::Unreachable));
        assert_eq!(w.last_error(), Some("connection refused"));
        let mut waits = vec![first];
        for _ in 0..8 {
            let (wait, out) = w.failed("connection refused");
            assert!(out.log.is_empty(), "logged once per state change");
            waits.push(wait);
        }
        assert_eq!(waits[0], MIN_BACKOFF);
        assert!(waits.windows(2).all(|p| p[1] >= p[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        // Back: the list replaces the keys; an unchanged set is not sent again.
        let out = w.listed([kv("/s/a", "10.0.2.11:80")], 40);
        assert_eq!(out.backends, None);
        assert_eq!(w.state(), State::Watching);
        assert_eq!(w.failed("again").0, MIN_BACKOFF, "backoff starts over");
        // A key deleted while etcd was away is gone after the list.
        let out = w.listed([], 41);
        assert_eq!(out.backends, Some(Backends::new()));
    }

    #[test]
    fn a_compacted_watch_lists_again_and_ends_with_the_final_keys() {
        let mut w = Watch::new();
        let _ = w.listed([kv("/s/a", "10.0.2.11:80"), kv("/s/b", "10.0.2.12:80")], 5);
        let out = w.compacted(20);
        assert_eq!(out.backends, None);
        assert_eq!(w.next(), Next::List);
        let out = w.listed([kv("/s/b", "10.0.2.12:80"), kv("/s/c", "10.0.2.13:80")], 25);
        assert_eq!(
            out.backends,
            Some(set(&[("10.0.2.12:80", 1), ("10.0.2.13:80", 1)]))
        );
        assert_eq!(w.next(), Next::Watch { from: 26 });
    }

    #[test]
    fn an_empty_first_list_is_sent() {
        let mut w = Watch::new();
        assert_eq!(w.listed([], 1).backends, Some(Backends::new()));
    }
}
