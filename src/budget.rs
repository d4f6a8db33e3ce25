//! Catalog write budgets. R2 Data Catalog accepts about 20 updates a minute
//! per table and answers 429 past that; a catch-up rollup of hundreds of
//! partitions, one commit each, would spend the budget ingest needs. Batch
//! runs (maintenance, backfill) therefore share a [`CommitBudget`]: at most
//! `n` commits to one table in any minute, and a plan too large for that is
//! committed in groups of partitions ([`CommitBudget::group_size`]).
//!
//! The budget is per process. Other writers (ingest, other engines, other
//! runs) are not counted; the REST client waits out the 429s they cause
//! (`catalog::rest`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iceberg::TableIdent;
use tokio::time::Instant;

/// Commits per minute per table on a REST catalog unless set: half of R2
/// Data Catalog's budget, leaving the rest to ingest and other writers.
pub const DEFAULT_REST_COMMITS_PER_MINUTE: u32 = 10;

/// Most partitions grouped into one commit. A group whose commit is
/// superseded falls back to one commit per partition, so a group costs at
/// most this many partitions' merges if another writer won the race; and
/// each partition's rewrite stays reviewable in the snapshot log.
pub const MAX_GROUP: usize = 16;

/// The default budget: SQL catalogs (SQLite, PostgreSQL) have none; REST
/// catalogs (R2 Data Catalog, ...) get [`DEFAULT_REST_COMMITS_PER_MINUTE`].
pub fn default_commits_per_minute(rest_catalog: bool) -> u32 {
    if rest_catalog {
        DEFAULT_REST_COMMITS_PER_MINUTE
    } else {
        0
    }
}

/// At most `per_minute` commits to each table in any window of a minute.
///
/// A sliding window, not a token bucket: a bucket holding `n` tokens that
/// refills `n` a minute lets `2n` commits through in the first minute, and
/// the catalog counts commits per minute. A commit holds its place in the
/// window from when it is let through until its [`Permit`] is dropped (the
/// commit answered), so commits that take seconds, or wait out a throttled
/// catalog, still reach the catalog at most `n` to a minute.
#[derive(Debug, Clone)]
pub struct CommitBudget {
    per_minute: Option<usize>,
    window: Duration,
    /// Per table: the commits in the current window (id, when let through
    /// or, once answered, when answered).
    recent: Window,
}

type Window = Arc<Mutex<HashMap<String, VecDeque<(u64, Instant)>>>>;

/// One commit's place in the budget; dropping it (after the commit) marks
/// when the commit was answered.
#[derive(Debug)]
#[must_use = "hold the permit until the commit is answered"]
pub struct Permit {
    slot: Option<(Window, String, u64)>,
    waited: Duration,
}

impl Permit {
    /// How long the commit waited for the budget.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((window, key, id)) = self.slot.take() {
            let mut recent = window.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = recent
                .get_mut(&key)
                .and_then(|times| times.iter_mut().find(|(i, _)| *i == id))
            {
                slot.1 = Instant::now();
            }
        }
    }
}

impl CommitBudget {
    /// `per_minute` commits to each table in any minute; 0 is unlimited.
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }

    /// No budget: every commit goes at once, one per partition.
    pub fn unlimited() -> Self {
        Self::new(0)
    }

    fn with_window(per_minute: u32, window: Duration) -> Self {
        Self {
            per_minute: (per_minute > 0).then_some(per_minute as usize),
            window,
            recent: Arc::default(),
        }
    }

    /// Commits per minute per table (`None`: unlimited).
    pub fn per_minute(&self) -> Option<usize> {
        self.per_minute
    }

    /// This run's share when `shards` runs spend the same budget at once
    /// (`maintain --shard i/n`): `n / shards`, at least one.
    pub fn share(&self, shards: u64) -> Self {
        let per = self
            .per_minute
            .map_or(0, |n| (n as u64 / shards.max(1)).max(1) as u32);
        Self::with_window(per, self.window)
    }

    /// Partitions per commit for a plan of `tasks` partition tasks: one while
    /// the plan fits in a minute's budget, then as many as it takes to fit
    /// (up to [`MAX_GROUP`]; beyond that the budget paces the commits).
    pub fn group_size(&self, tasks: usize) -> usize {
        match self.per_minute {
            Some(n) if tasks > n => tasks.div_ceil(n).min(MAX_GROUP),
            _ => 1,
        }
    }

    /// Wait until one more commit to `table` fits in the budget; hold the
    /// permit until the commit is answered.
    pub async fn acquire(&self, table: &TableIdent) -> Permit {
        let Some(limit) = self.per_minute else {
            return Permit {
                slot: None,
                waited: Duration::ZERO,
            };
        };
        let key = table.to_string();
        let started = Instant::now();
        let mut waited = false;
        loop {
            let now = Instant::now();
            let wait = {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                let times = recent.entry(key.clone()).or_default();
                times.retain(|(_, t)| now.saturating_duration_since(*t) < self.window);
                let oldest = times.iter().map(|(_, t)| *t).min();
                match oldest {
                    Some(oldest) if times.len() >= limit => self
                        .window
                        .saturating_sub(now.saturating_duration_since(oldest)),
                    _ => {
                        let id = times.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
                        times.push_back((id, now));
                        return Permit {
                            slot: Some((self.recent.clone(), key, id)),
                            waited: if waited {
                                now - started
                            } else {
                                Duration::ZERO
                            },
                        };
                    }
                }
            };
            if !waited {
                tracing::info!(
                    table = %table,
                    per_minute = limit,
                    wait_seconds = wait.as_secs_f64(),
                    "commit budget spent; waiting before the next commit"
                );
                waited = true;
            }
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_within_a_minute_commit_per_partition_larger_ones_in_groups() {
        let b = CommitBudget::new(10);
        assert_eq!(b.group_size(1), 1);
        assert_eq!(b.group_size(10), 1);
        assert_eq!(b.group_size(11), 2);
        assert_eq!(b.group_size(95), 10);
        assert_eq!(b.group_size(200), MAX_GROUP);
        assert_eq!(200usize.div_ceil(b.group_size(200)), 13);
        assert_eq!(CommitBudget::unlimited().group_size(200), 1);
    }

    #[test]
    fn shards_share_the_budget() {
        assert_eq!(CommitBudget::new(10).share(3).per_minute(), Some(3));
        assert_eq!(CommitBudget::new(10).share(40).per_minute(), Some(1));
        assert_eq!(CommitBudget::new(10).share(1).per_minute(), Some(10));
        assert_eq!(CommitBudget::unlimited().share(4).per_minute(), None);
        assert_eq!(default_commits_per_minute(true), 10);
        assert_eq!(default_commits_per_minute(false), 0);
    }

    #[tokio::test]
    async fn commits_past_the_budget_wait_for_the_window_per_table() {
        let b = CommitBudget::with_window(2, Duration::from_millis(300));
        let t = TableIdent::from_strs(["usage", "a"]).unwrap();
        let other = TableIdent::from_strs(["usage", "b"]).unwrap();
        let first = b.acquire(&t).await;
        assert_eq!(first.waited(), Duration::ZERO);
        drop(first);
        assert_eq!(b.acquire(&t).await.waited(), Duration::ZERO);
        // Another table has its own budget.
        assert_eq!(b.acquire(&other).await.waited(), Duration::ZERO);
        // The third commit to `t` waits until the first leaves the window,
        // also through a clone (clones share the count).
        assert!(b.clone().acquire(&t).await.waited() > Duration::ZERO);
        assert_eq!(
            CommitBudget::unlimited().acquire(&t).await.waited(),
            Duration::ZERO,
            "no budget, no wait"
        );
    }

    #[tokio::test]
    async fn a_commit_holds_its_place_until_it_is_answered() {
        let b = CommitBudget::with_window(1, Duration::from_millis(200));
        let t = TableIdent::from_strs(["usage", "a"]).unwrap();
        let slow = b.acquire(&t).await;
        // The commit takes longer than the window: the next one still waits
        // a whole window after it was answered.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(slow);
        let next = b.acquire(&t).await;
        assert!(next.waited() > Duration::ZERO);
    }
}
