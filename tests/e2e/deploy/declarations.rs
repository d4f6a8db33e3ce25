//! deploy/kubernetes/declarations.yaml: the ConfigMaps that carry schemas/
//! and jobs/ into the pods, generated from those files and equal to them
//! byte for byte (`FIRN_UPDATE_DEPLOY=1` regenerates it).

use super::kubernetes::{configmap_data, k8s_dir, manifests};
use super::{read, repo, with_extension};

/// deploy/kubernetes/declarations.yaml as generated from schemas/ and jobs/.
fn declarations_yaml() -> String {
    let configmap = |name: &str, dir: &str| {
        let mut out = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    \
             app.kubernetes.io/name: firn\n    app.kubernetes.io/part-of: firn\ndata:\n"
        );
        for path in with_extension(&repo().join(dir), &["toml"]) {
            let text = read(&path);
            let key = path.file_name().unwrap().to_str().unwrap();
            // A literal block keeps the file byte for byte when it ends with
            // one newline and has no leading blank or trailing whitespace.
            let literal = text.ends_with('\n')
                && !text.ends_with("\n\n")
                && !text.starts_with([' ', '\n'])
                && !text.contains('\r')
                && text.lines().all(|l| l == l.trim_end());
            if literal {
                out.push_str(&format!("  {key}: |\n"));
                for line in text.lines() {
                    if line.is_empty() {
                        out.push('\n');
                    } else {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            } else {
                out.push_str(&format!(
                    "  {key}: {}\n",
                    serde_json::to_string(&text).unwrap()
                ));
            }
        }
        out
    };
    format!(
        "# Generated from schemas/*.toml and jobs/*.toml by tests/e2e/deploy/: do\n\
         # not edit. After changing a declaration or a job file, regenerate it with\n\
         #   FIRN_UPDATE_DEPLOY=1 cargo nextest run --test e2e deploy::\n\
         # apply it, and restart the ingest workers, which read the declarations when\n\
         # they start: kubectl rollout restart deployment/firn-ingest\n\
         {}---\n{}",
        configmap("firn-schemas", "schemas"),
        configmap("firn-jobs", "jobs")
    )
}

#[test]
fn declarations_configmaps_equal_the_repository_files() {
    let path = k8s_dir().join("declarations.yaml");
    let want = declarations_yaml();
    if std::env::var("FIRN_UPDATE_DEPLOY").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
    }
    assert!(
        read(&path) == want,
        "{} is out of date with schemas/ and jobs/: regenerate it with \
         FIRN_UPDATE_DEPLOY=1 cargo nextest run --test e2e deploy::",
        path.display()
    );
    // What the API server stores is each file, byte for byte.
    let ms = manifests();
    for (name, dir) in [("firn-schemas", "schemas"), ("firn-jobs", "jobs")] {
        let data = configmap_data(&ms, name);
        let files = with_extension(&repo().join(dir), &["toml"]);
        assert_eq!(data.len(), files.len(), "{name}");
        for f in files {
            let key = f.file_name().unwrap().to_str().unwrap();
            assert_eq!(data.get(key), Some(&read(&f)), "{name} {key}");
        }
    }
}
