//! deploy/grafana: the dashboard is well formed (unique ids, panels that do
//! not overlap, one datasource variable) and every query is PromQL that
//! Prometheus parses.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

use super::{array_of, read, repo, run_ok, str_of, target_tool};

pub(super) fn dashboard() -> Value {
    serde_json::from_str(&read(&repo().join("deploy/grafana/firn.json"))).unwrap()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p.clone());
        out.extend(array_of(&p["panels"]));
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets and variable
/// queries): (where, expr), Grafana's variables as written.
pub(super) fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in array_of(&p["targets"]) {
            let at = format!("panel {} {}", p["id"], p["title"]);
            out.push((at, str_of(&t["expr"], "expr").to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// The same expression with Grafana's variables replaced by values
/// Prometheus accepts.
fn substitute_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$table", ".*")
        .replace("$job", ".*")
}

#[test]
fn dashboard_is_well_formed_and_its_queries_parse() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("table")["type"], "query");

    let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    for p in panels(&d) {
        let at = format!("panel {} {}", p["id"], p["title"]);
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{at}: duplicate id"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{at}: {g}");
        for (bx, by, bw, bh, other) in &boxes {
            let overlap = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
            assert!(!overlap, "{at} overlaps {other}");
        }
        boxes.push((x, y, w, h, at.clone()));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], datasource, "{at}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{at}");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| str_of(&t["refId"], "refId"))
            .collect();
        assert_eq!(refs.len(), targets.len(), "{at}: refIds");
        for t in targets {
            assert_eq!(t["datasource"], datasource, "{at}");
        }
    }

    // Every query is PromQL that Prometheus parses: promtool checks them as
    // recording rules.
    let Some(promtool) = target_tool("promtool") else {
        return;
    };
    let rules: Vec<Value> = dashboard_exprs(&d)
        .iter()
        .filter(|(_, e)| !e.starts_with("label_values("))
        .enumerate()
        .map(|(i, (_, e))| json!({"record": format!("dashboard:query_{i}"), "expr": substitute_grafana_variables(e)}))
        .collect();
    assert!(rules.len() >= 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yml");
    let doc = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    run_ok(Command::new(&promtool).args(["check", "rules"]).arg(&file));
}
