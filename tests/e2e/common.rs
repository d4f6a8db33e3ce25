//! The real local stack for end-to-end tests: a tansu broker (sqlite engine)
//! on a free loopback port in a temporary folder, the built `firn` binary
//! run as a subprocess against a temporary SQLite catalog and warehouse, and
//! helpers that read the table back through the library.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firn::catalog::Catalog;
use firn::clock::SystemClock;
use firn::config::{Config, Overrides};
use firn::offsets;
use firn::produce::{self, ProduceOptions, ProduceReport};
use firn::schema::decl::TableDecl;
use firn::tables;

pub const GROUP: &str = "firn-e2e";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FIRN_TANSU") {
        return PathBuf::from(p);
    }
    let home_bin =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu");
    if home_bin.exists() {
        return home_bin;
    }
    PathBuf::from("tansu")
}

/// A tansu broker on loopback, stopped when dropped.
pub struct Broker {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(tansu_binary())
            .current_dir(dir.path())
            .args([
                "broker",
                "--storage-engine",
                "sqlite://tansu.db",
                "--kafka-listener-url",
                &url,
                "--kafka-advertised-listener-url",
                &url,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start tansu ({e}); install it with deploy/local/install-tansu.sh")
            });
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Broker {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A firn deployment in a temporary folder: schemas, catalog, warehouse.
pub struct Lake {
    pub dir: tempfile::TempDir,
    pub brokers: String,
    /// REST catalog and S3 warehouse instead of SQLite and local files.
    pub rest: Option<RestTarget>,
    /// A SQL catalog other than the lake's own SQLite file: (uri, name).
    pub sql: Option<(String, String)>,
}

/// A REST catalog and its S3 API, as a lake uses them.
#[derive(Clone)]
pub struct RestTarget {
    pub overrides: Overrides,
    pub credential: String,
    pub secret: String,
}

impl Lake {
    pub fn new(broker: &Broker) -> Self {
        Self::with_brokers(&broker.addr)
    }

    fn with_brokers(brokers: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
        // The shipped declaration without its [health] thresholds: tests
        // that judge health declare the thresholds they test.
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
        )
        .unwrap();
        let mut in_health = false;
        let kept: Vec<&str> = shipped
            .lines()
            .filter(|l| {
                if l.starts_with('[') {
                    in_health = l.trim() == "[health]";
                }
                !in_health
            })
            .collect();
        std::fs::write(
            dir.path().join("schemas/usage.http_requests.toml"),
            kept.join("\n") + "\n",
        )
        .unwrap();
        Lake {
            dir,
            brokers: brokers.to_string(),
            rest: None,
            sql: None,
        }
    }

    /// A lake for tests that need no Kafka.
    pub fn without_broker() -> Self {
        Self::with_brokers("127.0.0.1:1")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn decl(&self) -> TableDecl {
        TableDecl::load(&self.path().join("schemas/usage.http_requests.toml")).unwrap()
    }

    /// The `firn` binary, configured for this lake.
    /// A lake on SeaweedFS: REST catalog, S3 warehouse (a `firn.toml` in the
    /// lake's folder says so; credentials come from the environment).
    pub fn on_rest(broker: &Broker, weed: &Seaweed) -> Self {
        let mut lake = Self::with_brokers(&broker.addr);
        let o = weed.overrides();
        let mut toml = format!(
            "[catalog]\ntype = \"rest\"\nuri = \"{}\"\nwarehouse = \"warehouse\"\n[storage]\n",
            o.catalog_uri.clone().unwrap()
        );
        for (k, v) in &o.storage {
            if !k.contains("secret") && !k.contains("key_id") {
                toml.push_str(&format!("{k} = \"{v}\"\n"));
            }
        }
        std::fs::write(lake.path().join("firn.toml"), toml).unwrap();
        lake.rest = Some(RestTarget {
            overrides: Overrides {
                catalog_credential: Some(weed.credential()),
                ..o
            },
            credential: weed.credential(),
            secret: weed.secret.clone(),
        });
        lake
    }

    /// A lake whose catalog is the SQL database `uri`, under catalog `name`.
    pub fn on_sql(broker: &Broker, uri: &str, name: &str) -> Self {
        let mut lake = Self::with_brokers(&broker.addr);
        lake.sql = Some((uri.to_string(), name.to_string()));
        lake
    }

    pub fn firn(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_firn"));
        c.current_dir(self.path());
        match &self.rest {
            None => {
                c.env("FIRN_CATALOG_URI", self.catalog_uri())
                    .env("FIRN_WAREHOUSE", self.path().join("warehouse"));
                if let Some((_, name)) = &self.sql {
                    c.env("FIRN_CATALOG_NAME", name);
                }
            }
            Some(r) => {
                c.env("FIRN_CATALOG_CREDENTIAL", &r.credential)
                    .env("AWS_ACCESS_KEY_ID", S3_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", &r.secret);
            }
        }
        c.env("FIRN_SCHEMAS", self.path().join("schemas"))
            .env("FIRN_BROKERS", &self.brokers)
            .env("FIRN_GROUP", GROUP)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn");
        c
    }

    fn catalog_uri(&self) -> String {
        if let Some((uri, _)) = &self.sql {
            return uri.clone();
        }
        format!(
            "sqlite://{}?mode=rwc",
            self.path().join("catalog.db").display()
        )
    }

    /// Run a firn command to completion; panic with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.firn().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "firn {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Start `firn ingest` in the background, flushing every second; its log
    /// goes to `ingest-NAME.log`.
    pub fn spawn_ingest(&self, name: &str, extra: &[&str]) -> Child {
        self.spawn_ingest_every(name, "1s", extra)
    }

    /// Start `firn ingest` with a commit interval.
    pub fn spawn_ingest_every(&self, name: &str, interval: &str, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.path().join(format!("ingest-{name}.log"))).unwrap();
        self.firn()
            .args([
                "ingest",
                "--commit-interval",
                interval,
                "--kafka-property",
                "session.timeout.ms=6000",
                "--kafka-property",
                "heartbeat.interval.ms=500",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("ingest-{name}.log"))).unwrap_or_default()
    }

    pub async fn catalog(&self) -> Arc<dyn Catalog> {
        if let Some(r) = &self.rest {
            return Config::with_overrides(&r.overrides)
                .unwrap()
                .open_catalog()
                .await
                .unwrap();
        }
        let o = Overrides {
            catalog_uri: Some(self.catalog_uri()),
            catalog_name: self.sql.as_ref().map(|(_, n)| n.clone()),
            warehouse: Some(self.path().join("warehouse").display().to_string()),
            schemas: Some(self.path().join("schemas")),
            brokers: Some(self.brokers.clone()),
            group: Some(GROUP.into()),
            ..Default::default()
        };
        Config::with_overrides(&o)
            .unwrap()
            .open_catalog()
            .await
            .unwrap()
    }

    /// Sum of the group's committed offsets in the table.
    pub async fn committed_records(&self, catalog: &dyn Catalog) -> i64 {
        let t = catalog
            .load(&tables::ident(&self.decl()).unwrap())
            .await
            .unwrap();
        offsets::read(&t.metadata, GROUP)
            .unwrap()
            .values()
            .flat_map(|m| m.values())
            .sum()
    }

    /// Wait until the table's offsets cover `records` records (topic offsets
    /// start at 0), or panic naming what was reached.
    pub async fn wait_for_offsets(&self, catalog: &dyn Catalog, records: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let at = self.committed_records(catalog).await;
            if at == records {
                return;
            }
            assert!(
                at <= records,
                "table offsets {at} passed the {records} records produced"
            );
            assert!(
                Instant::now() < deadline,
                "table offsets reached {at} of {records} records within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Wait until the table's offsets cover `records` records, then stop the
    /// ingest `worker` (logging as `name`) and check it stopped cleanly.
    pub async fn drain_and_stop(
        &self,
        worker: &mut Child,
        name: &str,
        records: i64,
        limit: Duration,
    ) {
        let catalog = self.catalog().await;
        self.wait_for_offsets(catalog.as_ref(), records, limit)
            .await;
        assert!(terminate(worker).success(), "{}", self.log(name));
    }

    /// Produce events through the library (same generator as `firn produce`).
    pub async fn produce(&self, opts: ProduceOptions) -> ProduceReport {
        self.produce_in_background(opts).await.unwrap()
    }

    /// Start producing; the handle yields the exact totals produced.
    pub fn produce_in_background(
        &self,
        opts: ProduceOptions,
    ) -> tokio::task::JoinHandle<ProduceReport> {
        let decl = self.decl();
        let opts = ProduceOptions {
            brokers: self.brokers.clone(),
            ..opts
        };
        tokio::task::spawn_blocking(move || {
            produce::produce(&decl, &opts, Arc::new(SystemClock)).unwrap()
        })
    }

    pub async fn create_topic(&self, partitions: i32) {
        produce::create_topic(&self.brokers, &self.decl().topic, partitions)
            .await
            .unwrap();
    }
}

/// Send SIGTERM and wait for the exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap()
}

/// The totals firn's commits of `operation` recorded in their snapshot
/// summaries (`key`: `firn.totals.added` or `firn.totals.removed`) for rows
/// of `grain`, summed over every snapshot the table holds, by measure.
pub fn summary_totals(
    table: &firn::catalog::TableHandle,
    operation: &str,
    key: &str,
    grain: &str,
) -> std::collections::BTreeMap<String, i128> {
    let mut out = std::collections::BTreeMap::new();
    for s in table.metadata.snapshots() {
        let props = &s.summary().additional_properties;
        if props.get("firn.operation").map(String::as_str) != Some(operation) {
            continue;
        }
        let Some(json) = props.get(key) else { continue };
        let by_grain: serde_json::Value = serde_json::from_str(json).unwrap();
        let Some(measures) = by_grain.get(grain).and_then(|m| m.as_object()) else {
            continue;
        };
        for (name, v) in measures {
            let v: i128 = match v {
                serde_json::Value::String(s) => s.parse().unwrap(),
                v => v.as_i64().map(i128::from).unwrap_or(0),
            };
            *out.entry(name.clone()).or_default() += v;
        }
    }
    out
}

/// Run `command` for at most `limit`: `Ok` with its output when it ended,
/// `Err` with what it wrote when it did not (it is then stopped: SIGTERM,
/// and SIGKILL if it is still there 30 s later).
pub fn output_within(
    mut command: Command,
    limit: Duration,
) -> Result<std::process::Output, std::process::Output> {
    use std::io::{Read, Seek};
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    let mut child = command
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut ended = true;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            ended = false;
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |f: &mut std::fs::File| {
        let mut bytes = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut bytes).unwrap();
        bytes
    };
    let output = std::process::Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    if ended { Ok(output) } else { Err(output) }
}

/// Peak resident set (VmHWM) of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A lake without Kafka for library-level tests: a SQLite catalog and a local
/// warehouse in a temporary folder, with the example table synced.
pub async fn local_lake() -> (tempfile::TempDir, Arc<dyn Catalog>, TableDecl) {
    lake_on(None).await
}

/// PostgreSQL for catalog tests: `FIRN_TEST_POSTGRES` or the machine's
/// server at 127.0.0.1:5432. Set `FIRN_TEST_POSTGRES=skip` where there is
/// none; the tests then say they were skipped instead of failing.
pub fn postgres_uri() -> Option<String> {
    match std::env::var("FIRN_TEST_POSTGRES").as_deref() {
        Ok("skip") => {
            eprintln!("SKIPPED: FIRN_TEST_POSTGRES=skip, no PostgreSQL catalog test");
            None
        }
        Ok(uri) => Some(uri.to_string()),
        Err(_) => Some("postgres://postgres@127.0.0.1:5432/test".to_string()),
    }
}

/// Like [`local_lake`], with the catalog in `uri` (a fresh catalog name, so
/// runs do not see each other) when given.
pub async fn lake_on(uri: Option<&str>) -> (tempfile::TempDir, Arc<dyn Catalog>, TableDecl) {
    let (dir, catalog, decl, _) = lake_named(uri).await;
    (dir, catalog, decl)
}

/// [`lake_on`], also returning the catalog name it used.
pub async fn lake_named(
    uri: Option<&str>,
) -> (tempfile::TempDir, Arc<dyn Catalog>, TableDecl, String) {
    let dir = tempfile::tempdir().unwrap();
    let name = match uri {
        Some(_) => format!("firn-test-{}", uuid::Uuid::now_v7()),
        None => "firn".to_string(),
    };
    let o = Overrides {
        catalog_name: Some(name.clone()),
        catalog_uri: Some(uri.map(str::to_string).unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("catalog.db").display()
            )
        })),
        warehouse: Some(dir.path().join("warehouse").display().to_string()),
        ..Default::default()
    };
    let catalog = Config::with_overrides(&o)
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let decl = TableDecl::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/usage.http_requests.toml"),
    )
    .unwrap();
    tables::sync(catalog.as_ref(), &decl, Default::default())
        .await
        .unwrap();
    (dir, catalog, decl, name)
}

/// The access key every test SeaweedFS accepts; the secret is random per run.
pub const S3_KEY: &str = "firnkey";

/// SeaweedFS `weed mini` on loopback: S3 and an Iceberg REST catalog whose
/// warehouse is the table bucket `warehouse`. Stopped when dropped.
pub struct Seaweed {
    child: Child,
    pub s3_port: u16,
    pub rest_port: u16,
    pub secret: String,
    _dir: tempfile::TempDir,
}

fn weed_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FIRN_WEED") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/weed");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("weed")
}

/// A free port whose +10000 gRPC twin is free too (SeaweedFS uses both).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl Seaweed {
    /// Start one, retrying on fresh ports if it does not come up.
    pub fn start() -> Self {
        for attempt in 1..=3 {
            match Self::try_start() {
                Some(w) => return w,
                None => eprintln!("SeaweedFS did not come up (attempt {attempt}); retrying"),
            }
        }
        panic!("SeaweedFS did not come up in three attempts")
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
        let [s3, rest, master, filer, volume] = [(); 5].map(|_| free_port_pair());
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed_binary())
            .current_dir(dir.path())
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .args([
                "mini",
                &format!("-dir={}", data.display()),
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                &format!("-s3.port={s3}"),
                &format!("-s3.port.iceberg={rest}"),
                &format!("-master.port={master}"),
                &format!("-filer.port={filer}"),
                &format!("-volume.port={volume}"),
                "-tableBucket=warehouse",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start SeaweedFS ({e}); install it with deploy/local/install-readers.sh"
                )
            });
        let mut weed = Seaweed {
            child,
            s3_port: s3,
            rest_port: rest,
            secret,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let token = Command::new("curl")
                .args([
                    "-sf",
                    "-X",
                    "POST",
                    &format!("http://127.0.0.1:{rest}/v1/oauth/tokens"),
                    "-d",
                    &format!(
                        "grant_type=client_credentials&client_id={S3_KEY}&client_secret={}",
                        weed.secret
                    ),
                ])
                .output();
            let s3_up = std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok();
            // Ready when the table bucket answers (it is created after start).
            let token: Option<String> = token
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|v| v["access_token"].as_str().map(str::to_string));
            let bucket_up = token.is_some_and(|t| {
                Command::new("curl")
                    .args([
                        "-sf",
                        "-H",
                        &format!("Authorization: Bearer {t}"),
                        &format!("http://127.0.0.1:{rest}/v1/warehouse/namespaces"),
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            if s3_up && bucket_up {
                break;
            }
            if Instant::now() >= deadline || weed.child.try_wait().ok().flatten().is_some() {
                let _ = weed.child.kill();
                let _ = weed.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Some(weed)
    }

    /// Overrides for a firn lake on this SeaweedFS (REST catalog, S3).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            catalog_type: Some("rest".into()),
            catalog_uri: Some(format!("http://127.0.0.1:{}", self.rest_port)),
            warehouse: Some("warehouse".into()),
            storage: self.storage_options(),
            ..Default::default()
        }
    }

    /// Object store options for its S3 API.
    pub fn storage_options(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.s3_port)),
            ("aws_region", "us-east-1".to_string()),
            ("aws_allow_http", "true".to_string()),
            ("aws_access_key_id", S3_KEY.to_string()),
            ("aws_secret_access_key", self.secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `id:secret` for the REST catalog's OAuth2.
    pub fn credential(&self) -> String {
        format!("{S3_KEY}:{}", self.secret)
    }

    /// Arguments and environment by which the Python scripts in
    /// tests/readers reach its REST catalog and S3 warehouse.
    pub fn reader_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        (
            vec![
                "--catalog-type".into(),
                "rest".into(),
                "--catalog-uri".into(),
                format!("http://127.0.0.1:{}", self.rest_port),
                "--warehouse".into(),
                "s3://warehouse/".into(),
                "--s3-endpoint".into(),
                format!("127.0.0.1:{}", self.s3_port),
            ],
            vec![
                ("AWS_ACCESS_KEY_ID".into(), S3_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
                ("FIRN_CATALOG_CREDENTIAL".into(), self.credential()),
            ],
        )
    }
}

/// The venv's Python, with PyIceberg and DuckDB (`FIRN_PYTHON` or
/// target/venv).
pub fn python() -> PathBuf {
    let p = std::env::var("FIRN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python")
        });
    assert!(
        p.exists(),
        "no Python with PyIceberg and DuckDB at {} (run deploy/local/install-readers.sh)",
        p.display()
    );
    p
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `rows` as minute files and commit them as one append; the snapshot id.
pub async fn append_minute_rows(
    catalog: &dyn Catalog,
    decl: &TableDecl,
    rows: firn::rows::RowMap,
) -> i64 {
    let ident = tables::ident(decl).unwrap();
    let table = catalog.load(&ident).await.unwrap();
    let files = firn::write::write_rows(
        &table,
        decl,
        firn::schema::layout::Grain::Minute,
        rows.sorted(&firn::rows::MeasureSpec::new(decl)),
        128 << 20,
    )
    .await
    .unwrap();
    append_files(catalog, &ident, files).await
}

/// Commit `files` to table `ident` as one append (a backfill's); the
/// snapshot's id.
pub async fn append_files(
    catalog: &dyn Catalog,
    ident: &iceberg::TableIdent,
    files: Vec<firn::commit::NewFile>,
) -> i64 {
    firn::commit::commit(
        catalog,
        ident,
        &firn::commit::Change::append(firn::commit::FirnOperation::Backfill, files),
        firn::commit::RetryPolicy::default(),
    )
    .await
    .unwrap()
    .snapshot_id
}

/// The path of a shipped job file (`jobs/NAME`).
pub fn job(name: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("jobs")
        .join(name)
        .display()
        .to_string()
}
