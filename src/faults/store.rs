//! [`FaultStore`]: an `ObjectStore` that injects a plan's faults around the
//! store it wraps. (object_store's `ThrottledStore` waits the same on every
//! call; the gauntlet needs a decision per operation, so latency spikes are
//! the plan's own.)

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

use super::{Decision, Fault, Faults, Op, Step, injected_error};

/// An `ObjectStore` failing, delaying, hiding or killing as `faults` says.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<Faults>,
}

impl FaultStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    /// Decide `op` on `path`: `Ok(decision)` to go on (after any latency),
    /// `Err` for a failure before the operation.
    async fn before(&self, op: Op, path: &Path) -> Result<Decision> {
        before(&self.faults, op, path.as_ref()).await
    }
}

async fn before(faults: &Faults, op: Op, path: &str) -> Result<Decision> {
    faults.before(op, Step::of(path), path).await.map_err(fail)
}

/// After the operation: a lost reply turns its success into an error; a
/// `kill_after` kills.
fn after<T>(
    faults: &Faults,
    decision: Decision,
    op: Op,
    path: &str,
    result: Result<T>,
) -> Result<T> {
    match faults.after(decision, op, Step::of(path), path, result.is_ok()) {
        Some(lost) => Err(fail(lost)),
        None => result,
    }
}

fn fail(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: message.into(),
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (with injected faults)", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let d = self.before(Op::Put, location).await?;
        let r = self.inner.put_opts(location, payload, opts).await;
        after(&self.faults, d, Op::Put, location.as_ref(), r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultUpload {
            upload,
            faults: self.faults.clone(),
            path: location.as_ref().to_string(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let d = self.before(op, location).await?;
        let r = self.inner.get_opts(location, options).await;
        after(&self.faults, d, op, location.as_ref(), r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let d = self.before(Op::Get, location).await?;
        let r = self.inner.get_ranges(location, ranges).await;
        after(&self.faults, d, Op::Get, location.as_ref(), r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        futures::stream::once(async move {
            let paths: Vec<Result<Path>> = locations.collect().await;
            let mut out = Vec::with_capacity(paths.len());
            for p in paths {
                let path = match p {
                    Ok(path) => path,
                    Err(e) => {
                        out.push(Err(e));
                        continue;
                    }
                };
                let d = match before(&faults, Op::Delete, path.as_ref()).await {
                    Ok(d) => d,
                    Err(e) => {
                        out.push(Err(e));
                        continue;
                    }
                };
                let one = futures::stream::iter([Ok(path.clone())]).boxed();
                let r = inner
                    .delete_stream(one)
                    .next()
                    .await
                    .unwrap_or(Ok(path.clone()));
                out.push(after(&faults, d, Op::Delete, path.as_ref(), r));
            }
            futures::stream::iter(out)
        })
        .flatten()
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let at = prefix.as_ref().map_or("", |p| p.as_ref()).to_string();
            let listed = match before(&faults, Op::List, &at).await {
                Ok(d) => {
                    let all: Vec<Result<ObjectMeta>> = inner.list(prefix.as_ref()).collect().await;
                    match d {
                        Decision::Inject(Fault::Hidden, p) => hide_young(all, p.window),
                        _ => after(&faults, d, Op::List, &at, Ok(all))
                            .unwrap_or_else(|e| vec![Err(e)]),
                    }
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(listed)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.map_or("", |p| p.as_ref()).to_string();
        let d = before(&self.faults, Op::List, &at).await?;
        let r = self.inner.list_with_delimiter(prefix).await;
        match (d, r) {
            (Decision::Inject(Fault::Hidden, p), Ok(mut listed)) => {
                let young = chrono::Utc::now() - p.window;
                listed.objects.retain(|m| m.last_modified < young);
                Ok(listed)
            }
            (d, r) => after(&self.faults, d, Op::List, &at, r),
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let d = self.before(Op::Copy, to).await?;
        let r = self.inner.copy_opts(from, to, options).await;
        after(&self.faults, d, Op::Copy, to.as_ref(), r)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let d = self.before(Op::Copy, to).await?;
        let r = self.inner.rename_opts(from, to, options).await;
        after(&self.faults, d, Op::Copy, to.as_ref(), r)
    }
}

/// A listing without the keys modified within `window`.
fn hide_young(
    all: Vec<Result<ObjectMeta>>,
    window: std::time::Duration,
) -> Vec<Result<ObjectMeta>> {
    let young = chrono::Utc::now() - window;
    all.into_iter()
        .filter(|m| m.as_ref().map_or(true, |m| m.last_modified < young))
        .collect()
}

/// A multipart upload whose parts and completion meet the plan.
#[derive(Debug)]
struct FaultUpload {
    upload: Box<dyn MultipartUpload>,
    faults: Arc<Faults>,
    path: String,
}

#[async_trait]
impl MultipartUpload for FaultUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let faults = self.faults.clone();
        let path = self.path.clone();
        // Decide now, in call order, so `nth` counts parts as they are sent.
        let decision = faults.decide(Op::Part, Step::of(&path), &path);
        let part = self.upload.put_part(data);
        Box::pin(async move {
            match decision {
                Decision::Inject(Fault::Error, _) => {
                    return Err(fail(injected_error(Fault::Error, Op::Part, &path)));
                }
                Decision::Inject(Fault::Latency, p) => tokio::time::sleep(p.latency).await,
                _ => {}
            }
            let r = part.await;
            after(&faults, decision, Op::Part, &path, r)
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let d = before(&self.faults, Op::Complete, &self.path).await?;
        let r = self.upload.complete().await;
        after(&self.faults, d, Op::Complete, &self.path, r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::super::FaultPlan;
    use super::*;

    fn store(rules: &str) -> FaultStore {
        let plan: FaultPlan = toml::from_str(rules).unwrap();
        FaultStore::new(
            Arc::new(InMemory::new()),
            Arc::new(Faults::new(plan).unwrap()),
        )
    }

    #[tokio::test]
    async fn an_error_before_leaves_nothing_and_a_lost_reply_leaves_the_object() {
        let s = store(
            r#"
            [[rule]]
            op = "put"
            fault = "error"
            nth = 1
            [[rule]]
            op = "put"
            fault = "lost_reply"
            nth = 2
            "#,
        );
        let a = Path::from("t/data/a.parquet");
        let e = s
            .put(&a, Bytes::from_static(b"a").into())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("failed before taking effect"), "{e}");
        assert!(s.head(&a).await.is_err(), "nothing was written");
        let e = s
            .put(&a, Bytes::from_static(b"a").into())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("was lost"), "{e}");
        assert_eq!(s.head(&a).await.unwrap().size, 1, "the object landed");
        s.put(&a, Bytes::from_static(b"ab").into()).await.unwrap();
    }

    #[tokio::test]
    async fn a_hidden_listing_misses_young_keys_only() {
        let s = store(
            r#"
            [[rule]]
            op = "list"
            fault = "hidden"
            nth = 2
            "#,
        );
        let a = Path::from("t/a");
        s.put(&a, Bytes::from_static(b"a").into()).await.unwrap();
        let n = |s: &FaultStore| {
            let listing = s.list(Some(&Path::from("t")));
            async move { listing.collect::<Vec<_>>().await.len() }
        };
        assert_eq!(n(&s).await, 1);
        assert_eq!(n(&s).await, 0, "the young key is hidden");
        assert_eq!(n(&s).await, 1);
    }

    #[tokio::test]
    async fn deletes_fail_one_by_one() {
        let s = store(
            r#"
            [[rule]]
            op = "delete"
            path = "b"
            fault = "error"
            nth = 1
            "#,
        );
        for k in ["t/a", "t/b", "t/c"] {
            s.put(&Path::from(k), Bytes::from_static(b"x").into())
                .await
                .unwrap();
        }
        let paths = ["t/a", "t/b", "t/c"].map(|k| Ok(Path::from(k)));
        let results: Vec<_> = s
            .delete_stream(futures::stream::iter(paths).boxed())
            .collect()
            .await;
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
        assert!(s.head(&Path::from("t/b")).await.is_ok(), "b is still there");
        assert!(s.head(&Path::from("t/a")).await.is_err());
    }
}
