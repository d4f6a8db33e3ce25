//! Trying again what may succeed on a second try, the one way firn does it:
//! exponential backoff with jitter (backon) under a [`RetryPolicy`] from the
//! configuration, retrying exactly the errors [`Error::retryable`] says may
//! succeed on fresh state, and logging each retry with what was being done.
//!
//! Object stores retry their own requests (object_store's `RetryConfig`) and
//! the REST catalog waits out throttling itself; this is for firn's own
//! operations: a commit that lost the compare-and-set, a catalog that failed.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{Error, ErrorKind, Result};

/// How hard to retry: attempts in all and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub max_attempts: u32,
    /// First backoff delay.
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Backoff between attempts: exponential from `min_delay` up to
    /// `max_delay`, with jitter, `max_attempts - 1` times.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
    }
}

/// Run `op` until it succeeds, fails with an error that is not
/// [retryable](Error::retryable), or has been tried `policy.max_attempts`
/// times; the last error is returned. `what` names the operation in the log.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    retry_when(policy, what, Error::retryable, op).await
}

/// [`retry`], for an operation that knows better than the error's kind
/// which of its errors a fresh attempt cures (`when`).
pub async fn retry_when<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    when: impl FnMut(&Error) -> bool,
    op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    op.retry(policy.backoff())
        .when(when)
        .notify(|e: &Error, wait: Duration| {
            // Losing a compare-and-set is routine when writers share a
            // table (and counted in metrics); anything else is worth a warning.
            if e.kind() == ErrorKind::CommitConflict {
                tracing::debug!(what, error = %e, ?wait, "retrying");
            } else {
                tracing::warn!(what, error = %e, ?wait, "retrying");
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    /// Run `retry` over an operation failing with `kind` until attempt
    /// `succeeds_at` (never with `u32::MAX`); the result and the attempts made.
    async fn attempts(kind: ErrorKind, succeeds_at: u32, max: u32) -> (Result<u32>, u32) {
        let calls = AtomicU32::new(0);
        let result = retry(quick(max), "testing", || async {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= succeeds_at {
                Ok(n)
            } else {
                Err(Error::new(kind, format!("attempt {n}")))
            }
        })
        .await;
        (result, calls.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_retryable_error_is_retried_up_to_max_attempts() {
        let (result, calls) = attempts(ErrorKind::CommitConflict, u32::MAX, 4).await;
        let e = result.unwrap_err();
        assert_eq!(calls, 4);
        assert_eq!(e.kind(), ErrorKind::CommitConflict);
        assert_eq!(e.message(), "attempt 4", "the last error is returned");

        let (result, calls) = attempts(ErrorKind::Storage, 3, 4).await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn a_non_retryable_error_is_returned_at_once() {
        for kind in [
            ErrorKind::Fenced,
            ErrorKind::Superseded,
            ErrorKind::InvalidInput,
        ] {
            let (result, calls) = attempts(kind, u32::MAX, 4).await;
            assert_eq!(result.unwrap_err().kind(), kind);
            assert_eq!(calls, 1, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn one_attempt_is_no_retry() {
        let (result, calls) = attempts(ErrorKind::Catalog, u32::MAX, 1).await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn the_caller_may_say_what_is_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<()> = retry_when(
            quick(3),
            "testing",
            |e| e.kind() == ErrorKind::Fenced,
            || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(Error::new(ErrorKind::Fenced, "moved on"))
            },
        )
        .await;
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Fenced);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }
}
