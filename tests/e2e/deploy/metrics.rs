//! What firn's batch runs publish, read back: a local Pushgateway, and the
//! samples of a Prometheus text exposition (pushed, or a node-exporter
//! textfile).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::free_port;

/// A Pushgateway on a free loopback port, stopped when dropped.
pub(super) struct Pushgateway {
    child: std::process::Child,
    pub(super) url: String,
    _dir: tempfile::TempDir,
}

impl Pushgateway {
    pub(super) fn start(binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let gateway = Pushgateway {
            child,
            url,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http_get(&format!("{}/-/ready", gateway.url)).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the Pushgateway did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        gateway
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn http_get(url: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::get(url).await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    })
}

/// Samples of a Prometheus text exposition: (name, labels, value).
pub(super) fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap_or(f64::NAN))
        })
        .collect()
}

/// The value of the series `name` with exactly these values of `labels` (an
/// empty value: the label is absent).
pub(super) fn sample(
    all: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let has = |l: &BTreeMap<String, String>, k: &str, v: &str| {
        l.get(k).map(String::as_str).unwrap_or("") == v
    };
    all.iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| has(l, k, v)))
        .map(|s| s.2)
}
