//! The Kubernetes containers' commands, run for real: each pod's files laid
//! out as the kubelet mounts them, the ingest pods' init container creating
//! the tables, every CronJob and every shard of the Indexed Job running its
//! job against a local lake and publishing to a local Pushgateway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::kubernetes::{
    args_of, configmap_data, containers, manifests, object, volume_of, workloads,
};
use super::metrics::{Pushgateway, http_get, sample, samples};
use super::{array_of, flag, on_local_lake, rebase, run_ok, str_of, target_tool};

/// Lay a pod's /etc/firn out under `root` as the kubelet does: a ConfigMap
/// volume is a folder of symlinks through `..data` to a timestamped folder,
/// a subPath mount is the one file.
fn mount_pod_files(ms: &[(PathBuf, Value)], pod: &Value, c: &Value, root: &Path) {
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = volume_of(pod, m).unwrap();
        let Some(cm) = v["configMap"]["name"].as_str() else {
            continue;
        };
        let data = configmap_data(ms, cm);
        let target = root.join(str_of(&m["mountPath"], "mountPath").trim_start_matches('/'));
        if let Some(key) = m["subPath"].as_str() {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, &data[key]).unwrap();
            continue;
        }
        let stamp = target.join("..2026_01_01_00_00_00.000000001");
        std::fs::create_dir_all(&stamp).unwrap();
        std::os::unix::fs::symlink(stamp.file_name().unwrap(), target.join("..data")).unwrap();
        for (key, text) in &data {
            std::fs::write(stamp.join(key), text).unwrap();
            std::os::unix::fs::symlink(Path::new("..data").join(key), target.join(key)).unwrap();
        }
    }
}

/// `firn` run with a container's arguments and plain environment, its
/// /etc/firn paths moved under `root` and `$(VAR)` references expanded, on a
/// local SQLite catalog and warehouse in `lake` instead of the configured ones.
fn container_command(c: &Value, root: &Path, lake: &Path, extra_env: &[(&str, String)]) -> Command {
    let under_root = |s: &str| rebase(s, root, &["/etc/firn/"]);
    let mut env: BTreeMap<String, String> = array_of(&c["env"])
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                under_root(e["value"].as_str()?),
            ))
        })
        .collect();
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let expand = |s: String| {
        env.iter()
            .fold(s, |s, (k, v)| s.replace(&format!("$({k})"), v))
    };
    let args: Vec<String> = args_of(c).iter().map(|a| expand(under_root(a))).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firn"));
    cmd.args(&args).envs(&env).env("FIRN_CATALOG_TYPE", "sql");
    on_local_lake(&mut cmd, lake);
    cmd
}

#[test]
fn kubernetes_commands_run_and_publish_job_metrics() {
    let Some(binary) = target_tool("pushgateway") else {
        return;
    };
    let gateway = Pushgateway::start(&binary);
    let ms = manifests();
    let lake = tempfile::tempdir().unwrap();
    let point_at_gateway = |c: &Value| -> Value {
        let mut c = c.clone();
        for list in ["command", "args"] {
            if let Some(args) = c[list].as_array_mut() {
                let mut after = false;
                for a in args.iter_mut() {
                    if after {
                        *a = json!(gateway.url);
                    }
                    after = *a == "--pushgateway";
                }
            }
        }
        c
    };

    // The ingest pods' init container creates the tables.
    let d = object(&ms, "StatefulSet", "firn-ingest");
    let pod = &d["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let root = tempfile::tempdir().unwrap();
    mount_pod_files(&ms, pod, init, root.path());
    let out = run_ok(&mut container_command(init, root.path(), lake.path(), &[]));
    assert!(out.contains("usage.http_requests: created"), "{out}");

    // Each CronJob's run, and each shard of the Indexed Job, as written.
    let mut expected = Vec::new();
    for (w, pod) in workloads(&ms).filter(|(w, _)| w["kind"] != "StatefulSet") {
        let c = point_at_gateway(containers(pod).next().unwrap());
        let stem = flag(&args_of(&c), "--job").unwrap();
        let stem = Path::new(&stem)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let root = tempfile::tempdir().unwrap();
        mount_pod_files(&ms, pod, &c, root.path());
        let shards = match w["spec"]["completionMode"].as_str() {
            Some("Indexed") => w["spec"]["completions"].as_u64().unwrap(),
            _ => 0,
        };
        if shards == 0 {
            run_ok(&mut container_command(&c, root.path(), lake.path(), &[]));
            expected.push((stem.clone(), None));
        }
        for i in 0..shards {
            let index = [("JOB_COMPLETION_INDEX", i.to_string())];
            run_ok(&mut container_command(&c, root.path(), lake.path(), &index));
            expected.push((stem.clone(), Some(i.to_string())));
        }
    }
    let pushed = samples(&http_get(&format!("{}/metrics", gateway.url)).unwrap());
    for (job, shard) in expected {
        let labels = [
            ("job", job.as_str()),
            ("shard", shard.as_deref().unwrap_or("")),
        ];
        assert_eq!(
            sample(&pushed, "firn_job_success", &labels),
            Some(1.0),
            "{labels:?}"
        );
        let last = sample(&pushed, "firn_job_last_success_timestamp_seconds", &labels);
        assert!(last.is_some_and(|t| t > 1e9), "{labels:?}: {last:?}");
    }
}
