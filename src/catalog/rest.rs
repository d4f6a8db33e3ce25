//! The Iceberg REST catalog (R2 Data Catalog, Polaris, Lakekeeper,
//! SeaweedFS): OAuth2 client credentials or a static bearer token, the
//! `/v1/config` prefix, and firn's commits through the commit endpoint with
//! an `assert-ref-snapshot-id` requirement (409 = lost the race, retried by
//! the commit layer like the SQL compare-and-set).
//!
//! Every request, commits included, waits out a throttling catalog: R2 Data
//! Catalog answers 429 past its write budget (about 20 table updates a
//! minute) and a busy service may answer 503 with `Retry-After`. Neither
//! applied the request, so it is sent again after the wait the catalog asks
//! for, as long as [`THROTTLE_TOTAL_WAIT`] allows: a run that waits is slow,
//! a run that fails loses its written files. Any other 5xx on a commit has
//! an unknown outcome and is returned as an error.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use iceberg::io::FileIO;
use iceberg::spec::{MAIN_BRANCH, TableMetadata};
use iceberg::{TableIdent, TableRequirement, TableUpdate};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Catalog, StagedMetadata, TableHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::redact;
use crate::storage::{ObjectStoreStorage, file_io};

/// A secret whose `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to reach a REST catalog. `Debug` masks the URI's password and shows
/// no header value.
#[derive(Clone, Default)]
pub struct RestConfig {
    /// Base URI (without `/v1`).
    pub uri: String,
    /// Warehouse name or location, sent to `/v1/config`.
    pub warehouse: Option<String>,
    /// OAuth2 client credentials, `client_id:client_secret`.
    pub credential: Option<Secret>,
    /// A static bearer token (instead of credentials).
    pub token: Option<Secret>,
    /// OAuth2 scope.
    pub scope: Option<String>,
    /// Path prefix (default: what `/v1/config` says).
    pub prefix: Option<String>,
    /// Extra HTTP headers.
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for RestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestConfig")
            .field("uri", &redact::credentials(&self.uri))
            .field("warehouse", &self.warehouse)
            .field("credential", &self.credential)
            .field("token", &self.token)
            .field("scope", &self.scope)
            .field("prefix", &self.prefix)
            .field("headers", &self.headers.keys())
            .finish()
    }
}

/// A REST catalog client.
pub struct RestCatalog {
    config: RestConfig,
    client: reqwest::Client,
    prefix: String,
    warehouse_location: String,
    token: Mutex<Option<Secret>>,
    file_io: FileIO,
    storage: ObjectStoreStorage,
}

impl fmt::Debug for RestCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestCatalog")
            .field("uri", &redact::credentials(&self.config.uri))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct LoadTableResult {
    #[serde(rename = "metadata-location")]
    metadata_location: String,
    metadata: TableMetadata,
}

fn catalog_err(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Catalog, what)
}

/// Most throttled answers one request waits out.
const THROTTLE_ATTEMPTS: usize = 100;
/// The longest single wait; a longer `Retry-After` is cut to it.
const THROTTLE_MAX_WAIT: Duration = Duration::from_secs(120);
/// The longest one request waits in all before it fails (a retryable
/// `Catalog` error): far past any per-minute budget, so only a catalog that
/// stays throttled for half an hour fails a run.
pub const THROTTLE_TOTAL_WAIT: Duration = Duration::from_secs(30 * 60);

/// Why one attempt at a request produced no answer to return.
#[derive(Debug)]
enum Attempt {
    /// 429, or 503 with `Retry-After`: not applied; send it again after
    /// `retry_after` (or a backoff when the catalog named no time).
    Throttled {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// Anything else, returned as is.
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Failed(e)
    }
}

/// The throttling answer `status` and `headers` make, if they make one.
fn throttled(status: StatusCode, headers: &HeaderMap) -> Option<Attempt> {
    let header = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
    let retry_after = header.and_then(|v| parse_retry_after(v, SystemTime::now()));
    match status {
        StatusCode::TOO_MANY_REQUESTS => {}
        StatusCode::SERVICE_UNAVAILABLE if header.is_some() => {}
        _ => return None,
    }
    Some(Attempt::Throttled {
        status,
        retry_after,
    })
}

/// `Retry-After` as a wait from `now`: delay-seconds or an HTTP date
/// (RFC 9110, section 10.2.3); a date in the past is no wait.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl RestCatalog {
    /// Authenticate and read the catalog's configuration.
    pub async fn connect(config: RestConfig, storage: ObjectStoreStorage) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| catalog_err("building the HTTP client").with_source(e))?;
        let mut catalog = RestCatalog {
            token: Mutex::new(config.token.clone()),
            prefix: config.prefix.clone().unwrap_or_default(),
            warehouse_location: String::new(),
            file_io: file_io(&storage),
            storage,
            client,
            config,
        };
        let mut url = format!("{}/v1/config", catalog.config.uri.trim_end_matches('/'));
        if let Some(w) = &catalog.config.warehouse {
            url = format!("{url}?warehouse={}", urlencode(w));
        }
        let cfg = catalog.send(Method::GET, &url, None).await?;
        let pick = |k: &str| {
            cfg["overrides"][k]
                .as_str()
                .or(cfg["defaults"][k].as_str())
                .map(str::to_string)
        };
        if catalog.config.prefix.is_none()
            && let Some(p) = pick("prefix")
        {
            catalog.prefix = p;
        }
        catalog.warehouse_location = pick("warehouse")
            .or(catalog.config.warehouse.clone())
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        Ok(catalog)
    }

    async fn fetch_token(&self) -> std::result::Result<Option<Secret>, Attempt> {
        let Some(cred) = &self.config.credential else {
            return Ok(self.config.token.clone());
        };
        let (id, secret) = cred.0.split_once(':').ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                "catalog credential must be client_id:client_secret",
            )
        })?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ];
        if let Some(scope) = &self.config.scope {
            form.push(("scope", scope));
        }
        let url = format!("{}/v1/oauth/tokens", self.config.uri.trim_end_matches('/'));
        let resp = self
            .client
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                catalog_err(format!("requesting a token from {url}")).with_source(e.without_url())
            })?;
        let status = resp.status();
        if let Some(throttled) = throttled(status, resp.headers()) {
            return Err(throttled);
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match body["access_token"].as_str() {
            Some(t) if status.is_success() => Ok(Some(Secret(t.to_string()))),
            _ => Err(catalog_err(format!(
                "{url} refused the client credentials: HTTP {status} {}",
                body["error"]
            ))
            .into()),
        }
    }

    /// One request with the bearer token, sent again while the catalog
    /// throttles it (see the module docs).
    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        patiently(&method, url, || {
            self.request_once(method.clone(), url, body)
        })
        .await
    }

    /// One attempt at a request; a 401 refreshes the token once.
    async fn request_once(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> std::result::Result<(StatusCode, Value), Attempt> {
        for attempt in 0..2 {
            let mut token = self.token.lock().await;
            if token.is_none() || attempt == 1 {
                *token = self.fetch_token().await?;
            }
            let mut req = self.client.request(method.clone(), url);
            if let Some(t) = token.as_ref() {
                req = req.bearer_auth(&t.0);
            }
            drop(token);
            for (k, v) in &self.config.headers {
                req = req.header(k, v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| catalog_err(format!("{method} {url}")).with_source(e.without_url()))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && attempt == 0
                && self.config.credential.is_some()
            {
                continue;
            }
            if let Some(throttled) = throttled(status, resp.headers()) {
                return Err(throttled);
            }
            let text = resp.text().await.unwrap_or_default();
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok((status, value));
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Value> {
        let (status, value) = self.request(method.clone(), url, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(catalog_err(format!(
                "{method} {url}: HTTP {status}: {}",
                error_message(&value)
            )))
        }
    }

    fn table_url(&self, ident: &TableIdent) -> String {
        format!(
            "{}/tables/{}",
            self.namespace_url(ident),
            urlencode(ident.name())
        )
    }

    fn namespace_url(&self, ident: &TableIdent) -> String {
        format!(
            "{}/v1/{}namespaces/{}",
            self.config.uri.trim_end_matches('/'),
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            },
            urlencode(&ident.namespace().join("\u{1f}"))
        )
    }

    fn handle(&self, ident: &TableIdent, loaded: LoadTableResult) -> TableHandle {
        TableHandle {
            ident: ident.clone(),
            metadata: Arc::new(loaded.metadata),
            metadata_location: loaded.metadata_location,
            file_io: self.file_io.clone(),
        }
    }

    async fn commit_updates(
        &self,
        ident: &TableIdent,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<TableHandle> {
        let body = json!({
            "identifier": {"namespace": ident.namespace().as_ref(), "name": ident.name()},
            "requirements": requirements,
            "updates": updates,
        });
        let url = self.table_url(ident);
        let (status, value) = self.request(Method::POST, &url, Some(&body)).await?;
        match status {
            s if s.is_success() => {
                let loaded: LoadTableResult = serde_json::from_value(value).map_err(|e| {
                    catalog_err(format!("commit response for {ident} is not a table"))
                        .with_source(e)
                })?;
                Ok(self.handle(ident, loaded))
            }
            StatusCode::CONFLICT => Err(Error::new(
                ErrorKind::CommitConflict,
                format!(
                    "table {ident} changed concurrently: {}",
                    error_message(&value)
                ),
            )),
            s => Err(catalog_err(format!(
                "committing to {ident}: HTTP {s}: {}",
                error_message(&value)
            ))),
        }
    }
}

/// Run `attempt` until it answers, waiting out throttled answers: the
/// catalog's `Retry-After`, or an exponential backoff from one second when
/// it names none; each wait is logged. Past [`THROTTLE_ATTEMPTS`] waits or
/// [`THROTTLE_TOTAL_WAIT`] in all, a retryable `Catalog` error.
async fn patiently<T, F, Fut>(method: &Method, url: &str, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Attempt>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(THROTTLE_MAX_WAIT)
        .with_jitter()
        .with_max_times(THROTTLE_ATTEMPTS);
    let mut waited = Duration::ZERO;
    let mut waits = 0u32;
    let result = attempt
        .retry(backoff)
        .when(|e| matches!(e, Attempt::Throttled { .. }))
        .adjust(|e, next| {
            let Attempt::Throttled {
                status,
                retry_after,
            } = e
            else {
                return None;
            };
            let wait = retry_after.unwrap_or(next?).min(THROTTLE_MAX_WAIT);
            if waited + wait > THROTTLE_TOTAL_WAIT {
                return None;
            }
            waited += wait;
            waits += 1;
            tracing::warn!(
                %method,
                url = %redact::credentials(url),
                status = status.as_u16(),
                retry_after = ?retry_after,
                wait_seconds = wait.as_secs_f64(),
                waited_seconds = waited.as_secs_f64(),
                "catalog is throttling; waiting before sending the request again"
            );
            Some(wait)
        })
        .await;
    result.map_err(|e| match e {
        Attempt::Failed(e) => e,
        Attempt::Throttled { status, .. } => catalog_err(format!(
            "{method} {url}: still HTTP {status} after waiting {waits} times ({:.0}s in all); \
             the catalog's write budget stays spent (lower --max-commits-per-minute, or find \
             the other writers)",
            waited.as_secs_f64()
        )),
    })
}

fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[async_trait]
impl Catalog for RestCatalog {
    fn file_io(&self) -> &FileIO {
        &self.file_io
    }

    fn storage(&self) -> &ObjectStoreStorage {
        &self.storage
    }

    fn default_location(&self, ident: &TableIdent) -> String {
        super::table_location(&self.warehouse_location, ident)
    }

    async fn load(&self, ident: &TableIdent) -> Result<TableHandle> {
        let url = self.table_url(ident);
        let (status, value) = self.request(Method::GET, &url, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("table {ident} does not exist in the REST catalog"),
            ));
        }
        if !status.is_success() {
            return Err(catalog_err(format!(
                "loading {ident}: HTTP {status}: {}",
                error_message(&value)
            )));
        }
        let loaded: LoadTableResult = serde_json::from_value(value)
            .map_err(|e| catalog_err(format!("loading {ident}: not a table")).with_source(e))?;
        Ok(self.handle(ident, loaded))
    }

    async fn exists(&self, ident: &TableIdent) -> Result<bool> {
        match self.load(ident).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn create(&self, ident: &TableIdent, metadata: TableMetadata) -> Result<TableHandle> {
        let ns_url = format!(
            "{}/v1/{}namespaces",
            self.config.uri.trim_end_matches('/'),
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            }
        );
        let (status, value) = self
            .request(
                Method::POST,
                &ns_url,
                Some(&json!({"namespace": ident.namespace().as_ref(), "properties": {}})),
            )
            .await?;
        if !status.is_success() && status != StatusCode::CONFLICT {
            return Err(catalog_err(format!(
                "creating namespace {}: HTTP {status}: {}",
                ident.namespace().join("."),
                error_message(&value)
            )));
        }
        // The catalog writes the first metadata (and may choose the location);
        // the other partition specs follow as one commit.
        let spec = metadata
            .default_partition_spec()
            .as_ref()
            .clone()
            .into_unbound();
        let body = json!({
            "name": ident.name(),
            "schema": metadata.current_schema().as_ref(),
            "partition-spec": spec,
            "write-order": metadata.default_sort_order().as_ref(),
            "properties": metadata.properties(),
        });
        let created = self
            .send(
                Method::POST,
                &format!("{}/tables", self.namespace_url(ident)),
                Some(&body),
            )
            .await?;
        let loaded: LoadTableResult = serde_json::from_value(created)
            .map_err(|e| catalog_err(format!("creating {ident}: not a table")).with_source(e))?;
        let mut specs: Vec<_> = metadata
            .partition_specs_iter()
            .filter(|s| s.spec_id() != metadata.default_partition_spec_id())
            .collect();
        specs.sort_by_key(|s| s.spec_id());
        if specs.is_empty() {
            return Ok(self.handle(ident, loaded));
        }
        let updates = specs
            .into_iter()
            .map(|s| TableUpdate::AddSpec {
                spec: s.as_ref().clone().into_unbound(),
            })
            .collect();
        let requirements = vec![TableRequirement::UuidMatch {
            uuid: loaded.metadata.uuid(),
        }];
        self.commit_updates(ident, requirements, updates).await
    }

    async fn swap(&self, base: &TableHandle, staged: StagedMetadata) -> Result<TableHandle> {
        let (r#ref, snapshot_id) = staged
            .branch
            .clone()
            .unwrap_or_else(|| (MAIN_BRANCH.to_string(), base.metadata.current_snapshot_id()));
        let requirements = vec![
            TableRequirement::UuidMatch {
                uuid: base.metadata.uuid(),
            },
            TableRequirement::RefSnapshotIdMatch { r#ref, snapshot_id },
        ];
        self.commit_updates(&base.ident, requirements, staged.changes)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let parse = |v| parse_retry_after(v, now);
        assert_eq!(parse("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        // The obsolete formats HTTP still allows.
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse("Sun Nov  6 08:49:38 1994"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("soon"), None);
    }

    #[test]
    fn only_429_and_503_with_retry_after_are_throttling() {
        let mut headers = HeaderMap::new();
        let is = |s: u16, h: &HeaderMap| throttled(StatusCode::from_u16(s).unwrap(), h).is_some();
        assert!(is(429, &headers), "429 without Retry-After: backoff");
        assert!(
            !is(503, &headers),
            "a bare 503 on a commit has an unknown outcome"
        );
        assert!(!is(500, &headers));
        assert!(!is(409, &headers));
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert!(is(503, &headers));
        assert!(!is(502, &headers));
        match throttled(StatusCode::TOO_MANY_REQUESTS, &headers) {
            Some(Attempt::Throttled { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn throttled_attempts_are_sent_again_after_the_wait() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let answer = patiently(&Method::POST, "http://catalog/t", || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(Attempt::Throttled {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retry_after: Some(Duration::from_millis(1)),
                }),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!((answer, calls.into_inner()), (7, 3));
        // Other failures are not retried.
        let calls = std::sync::atomic::AtomicU32::new(0);
        let e = patiently(&Method::POST, "http://catalog/t", || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(Attempt::Failed(catalog_err("HTTP 500")))
        })
        .await
        .unwrap_err();
        assert_eq!((e.message(), calls.into_inner()), ("HTTP 500", 1));
    }

    #[test]
    fn secrets_never_print() {
        let c = RestConfig {
            uri: "http://127.0.0.1:8181".into(),
            credential: Some(Secret("id:hunter2".into())),
            token: Some(Secret("tok-hunter2".into())),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
