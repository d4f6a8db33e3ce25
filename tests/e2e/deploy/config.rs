//! What the deploy files hand firn to configure it: the firn.toml files load
//! and name only object_store options, and every FIRN_* and AWS_* variable
//! they set is one firn (or object_store) reads.

use std::collections::BTreeSet;
use std::process::Command;

use super::container::dockerfile;
use super::kubernetes::{containers, k8s_firn_toml, manifests, pod_template};
use super::systemd::{Unit, systemd_dir};
use super::{array_of, files_under, read, repo, run_ok, str_of};

#[test]
fn firn_accepts_the_configuration_files() {
    let ms = manifests();
    let dir = tempfile::tempdir().unwrap();
    let systemd = systemd_dir().join("firn.toml.example");
    for firn_toml in [k8s_firn_toml(&ms, dir.path()), systemd] {
        // Loads (unknown keys are refused) and names only object_store options.
        let config = firn::config::Config::load(Some(&firn_toml), &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", firn_toml.display()));
        for key in config.storage.0.keys() {
            let known = key.starts_with("retry_")
                || key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok();
            assert!(
                known,
                "{}: [storage] {key} is no S3 option",
                firn_toml.display()
            );
        }
        let out = run_ok(
            Command::new(env!("CARGO_BIN_EXE_firn"))
                .args(["tables", "check", "--config"])
                .arg(&firn_toml)
                .arg("--schemas")
                .arg(repo().join("schemas"))
                .current_dir(dir.path()),
        );
        assert!(out.contains("usage.http_requests ok"), "{out}");
    }
}

#[test]
fn firn_variables_in_deploy_are_ones_firn_reads() {
    // Every FIRN_* variable firn reads is named in some --help.
    let firn = env!("CARGO_BIN_EXE_firn");
    let mut known = BTreeSet::new();
    let mut pending = vec![Vec::<String>::new()];
    while let Some(path) = pending.pop() {
        let help = run_ok(Command::new(firn).args(&path).arg("--help"));
        known.extend(firn_names(&help));
        let commands = help.split("Commands:").nth(1).unwrap_or("");
        let commands = commands.split("\n\n").next().unwrap_or("");
        for line in commands.lines() {
            if let Some(sub) = line.split_whitespace().next()
                && line.starts_with("  ")
                && !line.starts_with("      ")
                && sub != "help"
            {
                pending.push(path.iter().cloned().chain([sub.to_string()]).collect());
            }
        }
    }
    assert!(
        known.contains("FIRN_CONFIG") && known.contains("FIRN_METRICS_ADDR"),
        "{known:?}"
    );

    // Every variable the deploy files set.
    let mut used: Vec<(String, String)> = Vec::new();
    for (path, d) in manifests() {
        let at = path.display().to_string();
        if d["kind"] == "Secret" {
            for k in d["stringData"].as_object().unwrap().keys() {
                used.push((at.clone(), k.clone()));
            }
        }
        if let Some(t) = pod_template(&d) {
            for c in containers(&t["spec"]) {
                for e in array_of(&c["env"]) {
                    used.push((at.clone(), str_of(&e["name"], "env").to_string()));
                }
            }
        }
    }
    for path in files_under(&systemd_dir()) {
        let at = path.display().to_string();
        if path.extension().is_some_and(|e| e == "service") {
            for e in Unit::load(&path).all("Service", "Environment") {
                used.push((at.clone(), e.split_once('=').unwrap().0.to_string()));
            }
        }
        if path.file_name().unwrap() == "firn.env.example" {
            for line in read(&path).lines() {
                let line = line.trim_start_matches('#');
                if let Some((k, _)) = line.split_once('=')
                    && !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                {
                    used.push((at.clone(), k.to_string()));
                }
            }
        }
    }
    let dockerfile = dockerfile();
    for line in read(&dockerfile).lines() {
        if let Some(rest) = line.strip_prefix("ENV ") {
            used.push((
                dockerfile.display().to_string(),
                rest.split('=').next().unwrap().to_string(),
            ));
        }
    }
    assert!(used.len() > 10);
    for (at, name) in used {
        if name.starts_with("FIRN_") {
            assert!(known.contains(&name), "{at}: firn does not read {name}");
        } else if name.starts_with("AWS_") {
            // object_store's AmazonS3Builder::from_env reads these.
            let key = name.to_ascii_lowercase();
            assert!(
                key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
                "{at}: {name}"
            );
        }
    }
}

fn firn_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("FIRN_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].trim_end_matches('_').to_string());
        rest = &tail[end..];
    }
    out
}
