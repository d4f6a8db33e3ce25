//! The worker's part in its consumer group beyond consuming: leaving it
//! within a bound when stopping, and warning while it holds no partitions.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::worker::IngestContext;

/// How long a stopping worker waits for the group to let it go.
pub(super) const CLOSE_LIMIT: Duration = Duration::from_secs(20);

/// Leave the group (with `leave`) and close the consumer, waiting at most
/// `limit`. Everything is flushed and committed by now; what is left is the
/// group's business, and a group whose rebalance never completes (a broker
/// that lost track of a killed member, or is gone) must not hold a stopping
/// worker: past the limit the close goes on in the background until the
/// process exits, and the broker expires the member after its session.
pub(super) fn close_within(consumer: BaseConsumer<IngestContext>, leave: bool, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("firn-consumer-close".into())
        .spawn(move || {
            if leave {
                consumer.unsubscribe();
            }
            drop(consumer);
            let _ = tx.send(());
        });
    match closing {
        Ok(_) => {
            if rx.recv_timeout(limit).is_err() {
                tracing::warn!(
                    ?limit,
                    "the consumer group did not confirm the close in time; stopping anyway \
                     (everything buffered is committed; the broker drops the member after its session timeout)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot start closing the consumer; stopping anyway"),
    }
}

/// Warns while a subscribed worker holds no partitions: every partition is
/// held by other members, or the group's rebalance does not complete.
pub(super) struct Unassigned {
    group: String,
    topics: String,
    since: Instant,
    next_warning: Duration,
    interval: Duration,
}

impl Unassigned {
    const FIRST_WARNING: Duration = Duration::from_secs(60);

    pub(super) fn new(group: &str, topics: &[String]) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.join(","),
            since: Instant::now(),
            next_warning: Self::FIRST_WARNING,
            interval: Self::FIRST_WARNING,
        }
    }

    /// Note whether partitions are assigned at `now`; true when it warned.
    pub(super) fn check(&mut self, assigned: bool, now: Instant) -> bool {
        if assigned {
            self.since = now;
            self.next_warning = Self::FIRST_WARNING;
            self.interval = Self::FIRST_WARNING;
            return false;
        }
        let waited = now.saturating_duration_since(self.since);
        let warn = waited >= self.next_warning;
        if warn {
            tracing::warn!(
                group = %self.group, topics = %self.topics, seconds = waited.as_secs(),
                "no partitions assigned: other members hold them all, or the group's rebalance \
                 has not completed (describe the group with kafka-consumer-groups)"
            );
            self.interval = (self.interval * 2).min(Duration::from_secs(600));
            self.next_warning = waited + self.interval;
        }
        warn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker left without partitions warns after a minute, then at
    /// doubling intervals (at most ten minutes apart), and starts over once
    /// assigned.
    #[test]
    fn an_unassigned_worker_warns_at_growing_intervals() {
        let start = Instant::now();
        let mut u = Unassigned::new("g", &["t".to_string()]);
        u.since = start;
        let warned_at = |u: &mut Unassigned, upto: u64| -> Vec<u64> {
            (0..=upto)
                .filter(|s| u.check(false, start + Duration::from_secs(*s)))
                .collect()
        };
        assert_eq!(
            warned_at(&mut u, 3000),
            vec![60, 180, 420, 900, 1500, 2100, 2700]
        );
        assert!(!u.check(true, start + Duration::from_secs(3001)));
        assert!(!u.check(false, start + Duration::from_secs(3060)));
        assert!(u.check(false, start + Duration::from_secs(3061)));
    }
}
