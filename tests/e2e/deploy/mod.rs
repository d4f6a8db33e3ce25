//! The production deployment files in `deploy/`, checked against the code and
//! the repository: Kubernetes manifests (validated offline against the API
//! schemas, every job file scheduled once, probes and shutdown grace,
//! references that resolve), systemd units (`systemd-analyze verify`, timers
//! equal to the job files' cron schedules), Prometheus rules (promtool checks
//! and unit tests), the Grafana dashboard (PromQL that parses, over metrics
//! firn exports) and the Dockerfile (hadolint). The manifests' and units'
//! commands also run for real, against a local lake and a local Pushgateway.
//!
//! The tools come from `deploy/local/install-deploy-tools.sh` (`target/venv`,
//! `target/tools`); a missing one fails the test unless
//! `FIRN_TEST_DEPLOY_TOOLS=skip`. `FIRN_UPDATE_DEPLOY=1` regenerates
//! `deploy/kubernetes/declarations.yaml` from `schemas/` and `jobs/`.
//!
//! This module holds what the subjects share: finding files and tools,
//! loading YAML, running commands.

mod config;
mod container;
mod cron;
mod declarations;
mod grafana;
mod kubernetes;
mod kubernetes_commands;
mod metrics;
mod prometheus;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn with_extension(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| exts.iter().any(|x| e == *x)))
        .collect()
}

/// The documents of a (multi-document) YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// The elements of an array; none when `v` is absent or no array.
fn array_of(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// The job files: (stem, path, cron schedule).
fn job_files() -> Vec<(String, PathBuf, String)> {
    let files = with_extension(&repo().join("jobs"), &["toml"]);
    assert!(!files.is_empty(), "no jobs/*.toml");
    files
        .into_iter()
        .map(|p| {
            let doc: toml::Value = toml::from_str(&read(&p)).unwrap();
            let schedule = doc["schedule"].as_str().expect("schedule").to_string();
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            (stem, p, schedule)
        })
        .collect()
}

/// Where the deploy files install `jobs/` on a host or in a pod.
const INSTALLED_JOBS: &str = "/etc/firn/jobs/";

/// Whether `installed`, a job file as the deploy files name it, is one of
/// the repository's `jobs/`.
fn is_repo_job(installed: &str) -> bool {
    installed
        .strip_prefix(INSTALLED_JOBS)
        .is_some_and(|file| repo().join("jobs").join(file).exists())
}

/// Run a command; (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let (ok, stdout, stderr) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// A tool the install script provides: its path, or `None` (test skipped)
/// when it is missing and `FIRN_TEST_DEPLOY_TOOLS=skip`.
fn installed_tool(path: PathBuf) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let what = path.display();
    if std::env::var("FIRN_TEST_DEPLOY_TOOLS").as_deref() == Ok("skip") {
        eprintln!("SKIPPED: {what} is missing (FIRN_TEST_DEPLOY_TOOLS=skip)");
        return None;
    }
    panic!("{what} is missing: run deploy/local/install-deploy-tools.sh");
}

fn venv_tool(name: &str) -> Option<PathBuf> {
    let venv = std::env::var("FIRN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/venv"));
    installed_tool(venv.join("bin").join(name))
}

fn target_tool(name: &str) -> Option<PathBuf> {
    installed_tool(repo().join("target/tools").join(name))
}

/// A tool of the machine (systemd, kubectl): its path, or `None` with the
/// reason printed.
fn system_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("SKIPPED: {name} is not installed on this machine");
    }
    found
}

/// The value of `--flag V` or `--flag=V`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

/// The commit interval a firn.toml sets (firn's own loader reads it).
fn commit_interval(firn_toml: &Path) -> Duration {
    firn::config::Config::load(Some(firn_toml), &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", firn_toml.display()))
        .ingest
        .commit_interval
}

/// `s` with each of the absolute `prefixes` moved under `root`.
fn rebase(s: &str, root: &Path, prefixes: &[&str]) -> String {
    prefixes.iter().fold(s.to_string(), |s, prefix| {
        s.replace(prefix, &format!("{}{prefix}", root.display()))
    })
}

/// `cmd` run in `lake`, on a local SQLite catalog and warehouse there
/// instead of the configured ones.
fn on_local_lake<'a>(cmd: &'a mut Command, lake: &Path) -> &'a mut Command {
    cmd.current_dir(lake)
        .env(
            "FIRN_CATALOG_URI",
            format!("sqlite://{}/catalog.db?mode=rwc", lake.display()),
        )
        .env("FIRN_WAREHOUSE", lake.join("warehouse"))
        .env("RUST_LOG", "warn")
}

#[test]
fn every_deploy_file_parses() {
    let dir = repo().join("deploy");
    let yaml = with_extension(&dir, &["yaml", "yml"]);
    let json = with_extension(&dir, &["json"]);
    assert!(yaml.len() >= 10, "{yaml:?}");
    assert!(!json.is_empty());
    for p in &yaml {
        assert!(!yaml_documents(p).is_empty(), "{} is empty", p.display());
    }
    for p in &json {
        serde_json::from_str::<Value>(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
