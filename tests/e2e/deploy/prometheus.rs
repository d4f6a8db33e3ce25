//! deploy/prometheus: the alert rules and the dashboard query only metrics
//! and labels firn exports, every job file has staleness alerts, and the
//! rules, their unit tests and the scrape config pass promtool.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::grafana::{dashboard, dashboard_exprs};
use super::{job_files, read, repo, run_ok, str_of, target_tool, yaml_documents};

fn prometheus_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

/// Every PromQL expression of the alert rules: (rule, expr).
fn alert_exprs() -> Vec<(String, String)> {
    let rules = &yaml_documents(&prometheus_dir().join("alerts.yml"))[0];
    let mut out = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            out.push((name.to_string(), str_of(&rule["expr"], name).to_string()));
        }
    }
    out
}

/// `promtool ARGS`, run in `dir`, reports SUCCESS.
fn assert_promtool_succeeds(promtool: &Path, args: &[&str], dir: &Path) {
    let out = run_ok(Command::new(promtool).args(args).current_dir(dir));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The metrics an expression names, with the label names of each selector:
/// `firn_*` identifiers, histogram series suffixes stripped.
fn metrics_in(expr: &str, exported: &[firn::telemetry::MetricInfo]) -> Vec<(String, Vec<String>)> {
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("firn_").map(|j| i + j) {
        let mut end = at;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        i = end;
        if at > 0 && ident(bytes[at - 1]) {
            continue;
        }
        let mut name = expr[at..end].to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && exported
                    .iter()
                    .any(|m| m.name == base && m.kind == "histogram")
            {
                name = base.to_string();
            }
        }
        let mut labels = Vec::new();
        if expr[end..].starts_with('{') {
            let close = end + expr[end..].find('}').unwrap();
            for matcher in expr[end + 1..close].split(',') {
                let label: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !label.is_empty() {
                    labels.push(label);
                }
            }
        }
        out.push((name, labels));
    }
    out
}

/// Labels of an expression's `by (...)` / `on (...)` / `without (...)`
/// clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by", "on", "without", "ignoring"] {
        let mut rest = expr;
        while let Some(i) = rest.find(&format!("{keyword} (")) {
            let before = rest[..i].chars().last();
            let tail = &rest[i + keyword.len() + 2..];
            let close = tail.find(')').unwrap();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                out.extend(
                    tail[..close]
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
            rest = &tail[close..];
        }
    }
    out
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let exported = firn::telemetry::exported_metrics();
    let d = dashboard();
    let exprs: Vec<(String, String)> = alert_exprs()
        .into_iter()
        .chain(dashboard_exprs(&d))
        .collect();
    // Labels every series has besides its own: the scrape's, the
    // Pushgateway's grouping key, the Kubernetes pod's; `le` of histograms.
    let target_labels = ["job", "instance", "shard", "namespace", "pod", "le"];
    let mut used = BTreeSet::new();
    for (at, expr) in &exprs {
        let metrics = metrics_in(expr, &exported);
        let mut labels_here: BTreeSet<&str> = target_labels.into_iter().collect();
        for (name, matchers) in &metrics {
            let m = exported
                .iter()
                .find(|m| m.name == name.as_str())
                .unwrap_or_else(|| panic!("{at}: {name} is not a metric firn exports"));
            used.insert(m.name);
            labels_here.extend(m.labels.iter().copied());
            for l in matchers {
                assert!(
                    m.labels.contains(&l.as_str()) || target_labels.contains(&l.as_str()),
                    "{at}: {name} has no label {l}"
                );
            }
        }
        if metrics.is_empty() {
            assert!(expr.contains("up{"), "{at}: no firn metric in {expr}");
        }
        for l in grouping_labels(expr) {
            assert!(
                labels_here.contains(l.as_str()),
                "{at}: no series of `{expr}` has label {l}"
            );
        }
    }
    let unused: Vec<&str> = exported
        .iter()
        .map(|m| m.name)
        .filter(|n| !used.contains(n))
        .collect();
    eprintln!("exported metrics no alert or panel uses: {unused:?}");
}

#[test]
fn every_job_file_has_staleness_alerts() {
    let exprs = alert_exprs();
    for (stem, _, _) in job_files() {
        for metric in [
            "firn_job_last_success_timestamp_seconds",
            "firn_job_last_run_timestamp_seconds",
        ] {
            let selector = format!("{metric}{{job=\"{stem}\"}}");
            assert!(
                exprs.iter().any(|(_, e)| e.contains(&selector)),
                "no alert watches {selector} (jobs/{stem}.toml)"
            );
        }
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = target_tool("promtool") else {
        return;
    };
    let dir = prometheus_dir();
    assert_promtool_succeeds(&promtool, &["check", "rules", "alerts.yml"], &dir);
    assert_promtool_succeeds(&promtool, &["test", "rules", "alerts_test.yml"], &dir);
    // The unit tests cover the alerts that page.
    let tests = read(&dir.join("alerts_test.yml"));
    for alert in [
        "FirnIngestLagGrowing",
        "FirnIngestLagHigh",
        "FirnIngestNoCommit",
        "FirnJobFailed",
    ] {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{alert}"
        );
    }
}

#[test]
fn prometheus_config_checks() {
    let Some(promtool) = target_tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Debian's promtool is built without Kubernetes service discovery: check
    // the rest of the file with a static target in its place.
    let text = read(&prometheus_dir().join("prometheus.yml"));
    let sd = "    kubernetes_sd_configs:\n      - role: pod\n";
    assert!(text.contains(sd));
    let text = text.replace(
        sd,
        "    static_configs:\n      - targets: [\"127.0.0.1:9464\"]\n",
    );
    std::fs::write(dir.path().join("prometheus.yml"), text).unwrap();
    std::fs::copy(
        prometheus_dir().join("alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    assert_promtool_succeeds(
        &promtool,
        &["check", "config", "prometheus.yml"],
        dir.path(),
    );
}
