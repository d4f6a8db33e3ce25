//! firn's one error type: a matchable kind, a message that names the thing at
//! fault (file, table, field, offset), and an optional source.
//!
//! Shaped like `iceberg::Error`: callers branch on [`ErrorKind`] and ask
//! [`Error::retryable`] instead of parsing messages. Messages and sources are
//! shown with the passwords of the URLs in them masked
//! ([`crate::redact::credentials`]): errors end up in logs, on stderr and in
//! `firn status --json`.

use std::fmt;

/// What went wrong, coarse enough to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A table declaration (`schemas/*.toml`) is malformed or inconsistent.
    InvalidDeclaration,
    /// Configuration (file, env, flags) is invalid.
    InvalidConfig,
    /// Input data (an event, a file) cannot be used.
    InvalidInput,
    /// The catalog changed under a commit (compare-and-set lost); retry on a fresh base.
    CommitConflict,
    /// The commit's Kafka offsets no longer match the table: another worker
    /// committed this range. The batch must be dropped and re-read.
    Fenced,
    /// A maintenance job's inputs were already replaced by another commit, or
    /// an overwrite's range gained data since it was planned; its output is
    /// dropped (orphan removal collects the files it wrote).
    Superseded,
    /// A commit failed in a way that may have applied it, and the table
    /// could not be read back to tell: re-read the table before going on.
    CommitUnknown,
    /// A table or namespace does not exist.
    NotFound,
    /// Object storage failed.
    Storage,
    /// The catalog (SQL database, REST service) failed.
    Catalog,
    /// The Kafka client failed.
    Kafka,
    /// Iceberg metadata or Parquet could not be read or written.
    Iceberg,
    /// Local I/O failed.
    Io,
    /// A bug or an impossible state.
    Internal,
}

/// The library's error.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Result with firn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message naming what is at fault (any
    /// URL's password in it masked).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            kind,
            message: crate::redact::credentials(&message).into_owned(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same operation may succeed if tried again on fresh state:
    /// a lost compare-and-set, or a store, catalog or broker that failed.
    /// What a fresh attempt cannot cure — a fence, a superseded replace, bad
    /// input or configuration, a missing table, a bug — is not.
    /// [`crate::retry`] asks this.
    pub fn retryable(&self) -> bool {
        match self.kind {
            ErrorKind::CommitConflict
            | ErrorKind::Storage
            | ErrorKind::Catalog
            | ErrorKind::Kafka => true,
            ErrorKind::InvalidDeclaration
            | ErrorKind::InvalidConfig
            | ErrorKind::InvalidInput
            | ErrorKind::Fenced
            | ErrorKind::Superseded
            | ErrorKind::CommitUnknown
            | ErrorKind::NotFound
            | ErrorKind::Iceberg
            | ErrorKind::Io
            | ErrorKind::Internal => false,
        }
    }

    /// Wrap an iceberg error with context saying what firn was doing.
    pub fn iceberg(context: impl Into<String>, err: iceberg::Error) -> Self {
        let kind = match err.kind() {
            iceberg::ErrorKind::CatalogCommitConflicts => ErrorKind::CommitConflict,
            iceberg::ErrorKind::TableNotFound | iceberg::ErrorKind::NamespaceNotFound => {
                ErrorKind::NotFound
            }
            _ if store_failed(&err) => ErrorKind::Storage,
            _ => ErrorKind::Iceberg,
        };
        Self::new(kind, context).with_source(err)
    }
}

/// Whether an object store request under `err` failed (and may succeed if
/// tried again): a missing object or a failed precondition is an answer, not
/// a failure.
fn store_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        // A buffered writer hands the store's error back inside an
        // io::Error, whose `source()` skips the error it wraps.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.get_ref() {
                Some(inner) => store_failed(inner),
                None => io.kind() != std::io::ErrorKind::NotFound,
            };
        }
        if let Some(store) = e.downcast_ref::<object_store::Error>() {
            return !matches!(
                store,
                object_store::Error::NotFound { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotModified { .. }
            );
        }
        cause = e.source();
    }
    false
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            let source = source.to_string();
            write!(f, ": {}", crate::redact::credentials(&source))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field(
                "source",
                &self
                    .source
                    .as_ref()
                    .map(|s| crate::redact::credentials(&s.to_string()).into_owned()),
            )
            .finish()
    }
}

/// `work` run on a task of its own (so that several run on the runtime's
/// threads at once), awaited; the task is aborted if this future is dropped
/// first (a caller that stopped on another error leaves nothing running).
/// A task that panicked is an internal error: "`what` stopped".
pub async fn on_task<T: Send + 'static>(
    what: impl fmt::Display,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    /// Aborts its task when dropped (a no-op once the task is done).
    struct Aborting<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for Aborting<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = Aborting(tokio::spawn(work));
    (&mut task.0)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("{what} stopped: {e}")))?
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(err: rdkafka::error::KafkaError) -> Self {
        Error::new(ErrorKind::Kafka, "kafka client").with_source(err)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::new(ErrorKind::Catalog, "SQL catalog").with_source(err)
    }
}

impl From<object_store::Error> for Error {
    fn from(err: object_store::Error) -> Self {
        Error::new(ErrorKind::Storage, "object store").with_source(err)
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(err: parquet::errors::ParquetError) -> Self {
        Error::new(ErrorKind::Iceberg, "parquet").with_source(err)
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(err: arrow_schema::ArrowError) -> Self {
        Error::new(ErrorKind::Internal, "arrow").with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_source_chain() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::new(ErrorKind::Io, "writing firn-data/x.parquet").with_source(io);
        assert_eq!(err.to_string(), "writing firn-data/x.parquet: disk on fire");
        assert_eq!(err.kind(), ErrorKind::Io);
    }

    #[test]
    fn retryable_kinds() {
        use ErrorKind::*;
        for kind in [CommitConflict, Storage, Catalog, Kafka] {
            assert!(Error::new(kind, "x").retryable(), "{kind:?}");
        }
        for kind in [
            InvalidDeclaration,
            InvalidConfig,
            InvalidInput,
            Fenced,
            Superseded,
            NotFound,
            Iceberg,
            Io,
            Internal,
        ] {
            assert!(!Error::new(kind, "x").retryable(), "{kind:?}");
        }
    }

    #[test]
    fn passwords_in_urls_never_show() {
        let cause = std::io::Error::other("connecting to http://u:hunter2@gw:9091/metrics failed");
        let err =
            Error::new(ErrorKind::Io, "pushing to http://u:hunter2@gw:9091").with_source(cause);
        for shown in [
            err.to_string(),
            format!("{err:?}"),
            err.message().to_string(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("http://u:***@gw:9091"), "{shown}");
        }
    }
}
