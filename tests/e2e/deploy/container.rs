//! deploy/container: the Dockerfile builds what Cargo.toml declares, from
//! paths .dockerignore lets through, runs as a user that is not root, and
//! lints clean with hadolint.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use super::{read, repo, run, venv_tool};

pub(super) fn dockerfile() -> PathBuf {
    repo().join("deploy/container/Dockerfile")
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped:
/// (INSTRUCTION, rest).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(&format!("{part} ")),
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_lints_clean_and_builds_what_cargo_declares() {
    let path = dockerfile();
    let text = read(&path);
    let instructions = dockerfile_instructions(&text);
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .unwrap();
    let runtime = &instructions[last_from..];
    let get = |op: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    assert!(
        instructions[last_from].1.contains("bookworm-slim")
            || instructions[last_from].1.contains("-slim")
    );
    let user = get("USER").last().copied().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u > 0),
        "USER {user}: numeric and not root"
    );
    assert_eq!(get("ENTRYPOINT").last().copied(), Some(r#"["firn"]"#));

    // Every COPY from the context exists and passes .dockerignore (an
    // allowlist: `*`, then `!path` per entry).
    let ignore = read(&repo().join(".dockerignore"));
    let allowed: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(allowed.first(), Some(&"*"), ".dockerignore is an allowlist");
    let mut copied = BTreeSet::new();
    for (op, rest) in &instructions {
        if op != "COPY" || rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: no such path");
            let src = src.trim_end_matches('/');
            let pass = allowed
                .iter()
                .any(|a| a.trim_start_matches('!').trim_end_matches('/') == src);
            assert!(pass, "COPY {src}: excluded by .dockerignore");
            copied.insert(src.to_string());
        }
    }
    // The dependency layer stubs every target Cargo.toml declares.
    let manifest: toml::Value = toml::from_str(&read(&repo().join("Cargo.toml"))).unwrap();
    let lib = manifest["lib"]["path"].as_str().unwrap_or("src/lib.rs");
    assert!(
        text.contains(lib),
        "the dependency layer does not stub {lib}"
    );
    for bin in manifest["bin"].as_array().unwrap() {
        let p = bin["path"].as_str().unwrap();
        assert!(text.contains(p), "the dependency layer does not stub {p}");
    }
    if manifest.get("bench").is_some() {
        assert!(
            copied.contains("benches"),
            "Cargo.toml declares benches: COPY benches"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src", "schemas", "jobs"] {
        assert!(copied.contains(needed), "COPY {needed}");
    }
    // The builder's toolchain is one Cargo.toml accepts.
    let arg = instructions
        .iter()
        .find_map(|(op, r)| {
            (op == "ARG")
                .then(|| r.strip_prefix("RUST_VERSION="))
                .flatten()
        })
        .expect("ARG RUST_VERSION");
    let version = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap()).collect() };
    let wanted = manifest["package"]["rust-version"].as_str().unwrap();
    assert!(
        version(arg) >= version(wanted),
        "rust {arg} < rust-version {wanted}"
    );
    // The image's FIRN_SCHEMAS is where the declarations are copied.
    let schemas_env = get("ENV")
        .iter()
        .find_map(|e| e.strip_prefix("FIRN_SCHEMAS="))
        .expect("ENV FIRN_SCHEMAS");
    assert!(
        get("COPY").contains(&format!("schemas {schemas_env}").as_str()),
        "{schemas_env}"
    );

    let Some(hadolint) = venv_tool("hadolint") else {
        return;
    };
    let (ok, stdout, stderr) = run(Command::new(hadolint).arg("--no-color").arg(&path));
    assert!(
        ok && stdout.trim().is_empty(),
        "hadolint:\n{stdout}\n{stderr}"
    );
}
