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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::free_port;

// ---------------------------------------------------------------- helpers

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

// ------------------------------------------------------------ Kubernetes

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every Kubernetes object under deploy/kubernetes: (file, object).
fn manifests() -> Vec<(PathBuf, Value)> {
    with_extension(&k8s_dir(), &["yaml", "yml"])
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .flat_map(|p| yaml_documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn objects<'a>(
    ms: &'a [(PathBuf, Value)],
    kind: &str,
) -> impl Iterator<Item = &'a Value> + use<'a> {
    let kind = kind.to_string();
    ms.iter()
        .map(|(_, d)| d)
        .filter(move |d| d["kind"] == kind.as_str())
}

fn object<'a>(ms: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    objects(ms, kind)
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn name_of(d: &Value) -> &str {
    str_of(&d["metadata"]["name"], "metadata.name")
}

/// The pod template of a workload.
fn pod_template(d: &Value) -> Option<&Value> {
    match d["kind"].as_str()? {
        "Deployment" | "Job" => Some(&d["spec"]["template"]),
        "CronJob" => Some(&d["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    }
}

fn workloads(ms: &[(PathBuf, Value)]) -> impl Iterator<Item = (&Value, &Value)> {
    ms.iter()
        .filter_map(|(_, d)| pod_template(d).map(|t| (d, &t["spec"])))
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    let list = |k: &str| pod[k].as_array().cloned().unwrap_or_default();
    let n_init = list("initContainers").len();
    (0..n_init)
        .map(move |i| &pod["initContainers"][i])
        .chain((0..list("containers").len()).map(move |i| &pod["containers"][i]))
}

fn args_of(c: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .flat_map(|k| c[*k].as_array().cloned().unwrap_or_default())
        .map(|a| str_of(&a, "an argument").to_string())
        .collect()
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

fn env_value(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

fn configmap_data(ms: &[(PathBuf, Value)], name: &str) -> BTreeMap<String, String> {
    let cm = object(ms, "ConfigMap", name);
    cm["data"]
        .as_object()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no data"))
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v, k).to_string()))
        .collect()
}

/// The ConfigMap firn.toml of the Deployment, on disk (for firn to load).
fn k8s_firn_toml(ms: &[(PathBuf, Value)], dir: &Path) -> PathBuf {
    let path = dir.join("firn.toml");
    std::fs::write(&path, &configmap_data(ms, "firn-config")["firn.toml"]).unwrap();
    path
}

/// The commit interval a firn.toml sets (firn's own loader reads it).
fn commit_interval(firn_toml: &Path) -> Duration {
    firn::config::Config::load(Some(firn_toml), &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", firn_toml.display()))
        .ingest
        .commit_interval
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

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let Some(validate) = venv_tool("kubernetes-validate") else {
        return;
    };
    let files: Vec<PathBuf> = with_extension(&k8s_dir(), &["yaml", "yml"])
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    // --strict refuses fields the API does not know (a misplaced key would
    // otherwise be dropped silently by the API server).
    run_ok(
        Command::new(&validate)
            .args(["--kubernetes-version", "1.30.0", "--strict", "--quiet"])
            .args(&files),
    );

    // What `kubectl apply -k` sends, when kubectl (with kustomize) is here.
    let Some(kubectl) = system_tool("kubectl") else {
        return;
    };
    let built = run_ok(Command::new(kubectl).arg("kustomize").arg(k8s_dir()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("built.yaml");
    std::fs::write(&out, &built).unwrap();
    run_ok(
        Command::new(&validate)
            .args(["--kubernetes-version", "1.30.0", "--strict", "--quiet"])
            .arg(&out),
    );
    let built = yaml_documents(&out);
    let kustomization = &yaml_documents(&k8s_dir().join("kustomization.yaml"))[0];
    let image = &kustomization["images"][0];
    let want = format!(
        "{}:{}",
        str_of(&image["newName"], "newName"),
        str_of(&image["newTag"], "newTag")
    );
    let mut n = 0;
    for d in &built {
        if let Some(t) = pod_template(d) {
            for c in containers(&t["spec"]) {
                assert_eq!(c["image"], want.as_str(), "{} {}", d["kind"], name_of(d));
                n += 1;
            }
        }
    }
    assert!(n >= 4, "{n} containers built");
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = &yaml_documents(&k8s_dir().join("kustomization.yaml"))[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(r, "resource").to_string())
        .collect();
    // The Secret template and the one-off Jobs are applied by hand, on purpose.
    let on_disk: BTreeSet<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml" && !f.contains("example"))
        .collect();
    assert_eq!(listed, on_disk);
    // Every firn image reference is the one kustomize rewrites.
    let image = str_of(&kustomization["images"][0]["name"], "images[0].name");
    for (w, pod) in workloads(&manifests()) {
        for c in containers(pod) {
            let reference = str_of(&c["image"], "image");
            assert_eq!(reference.split(':').next(), Some(image), "{}", name_of(w));
        }
    }
}

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
        "# Generated from schemas/*.toml and jobs/*.toml by tests/e2e/deploy.rs: do\n\
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

#[test]
fn every_job_file_has_one_cronjob_on_its_schedule() {
    let ms = manifests();
    let jobs = job_files();
    let mut scheduled = BTreeSet::new();
    for cj in objects(&ms, "CronJob") {
        let name = name_of(cj);
        let spec = &cj["spec"];
        let pod = &pod_template(cj).unwrap()["spec"];
        let runs: Vec<String> = containers(pod)
            .filter_map(|c| flag(&args_of(c), "--job"))
            .collect();
        assert_eq!(runs.len(), 1, "CronJob {name} runs {runs:?}");
        let file = runs[0]
            .strip_prefix("/etc/firn/jobs/")
            .unwrap_or_else(|| panic!("CronJob {name} runs {} outside /etc/firn/jobs", runs[0]));
        let (stem, _, schedule) = jobs
            .iter()
            .find(|(stem, _, _)| format!("{stem}.toml") == file)
            .unwrap_or_else(|| panic!("CronJob {name} runs jobs/{file}, which does not exist"));
        assert!(
            scheduled.insert(stem.clone()),
            "jobs/{file} has two CronJobs"
        );
        assert_eq!(spec["schedule"], schedule.as_str(), "CronJob {name}");
        assert_eq!(spec["timeZone"], "Etc/UTC", "CronJob {name}");
        assert_eq!(spec["concurrencyPolicy"], "Forbid", "CronJob {name}");
        assert!(
            spec["startingDeadlineSeconds"]
                .as_u64()
                .is_some_and(|s| s > 0),
            "{name}"
        );
        let job = &spec["jobTemplate"]["spec"];
        assert!(
            job["backoffLimit"].as_u64().is_some(),
            "CronJob {name}: backoffLimit"
        );
        assert!(
            job["activeDeadlineSeconds"].as_u64().is_some(),
            "CronJob {name}"
        );
        assert_eq!(pod["restartPolicy"], "Never", "CronJob {name}");
        let c = containers(pod).next().unwrap();
        let gateway = flag(&args_of(c), "--pushgateway").expect("--pushgateway");
        assert!(url::Url::parse(&gateway).is_ok_and(|u| u.scheme().starts_with("http")));
        // The job file is there: /etc/firn/jobs is a ConfigMap holding it.
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/etc/firn/jobs")
            .unwrap_or_else(|| panic!("CronJob {name} does not mount /etc/firn/jobs"));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let cm = str_of(&volume["configMap"]["name"], "configMap");
        assert!(
            configmap_data(&ms, cm).contains_key(file),
            "{cm} lacks {file}"
        );
    }
    let all: BTreeSet<String> = jobs.iter().map(|(s, _, _)| s.clone()).collect();
    assert_eq!(scheduled, all, "job files without a CronJob");
}

#[test]
fn sharded_job_covers_every_shard() {
    let ms = manifests();
    let indexed: Vec<&Value> = objects(&ms, "Job")
        .filter(|j| j["spec"]["completionMode"] == "Indexed")
        .collect();
    assert!(!indexed.is_empty(), "no Indexed Job example");
    for job in indexed {
        let spec = &job["spec"];
        let n = spec["completions"].as_u64().expect("completions");
        assert_eq!(spec["parallelism"].as_u64(), Some(n), "{}", name_of(job));
        let c = containers(&spec["template"]["spec"]).next().unwrap();
        let args = args_of(c);
        let shard = flag(&args, "--shard").expect("--shard");
        assert_eq!(
            shard,
            format!("$(JOB_COMPLETION_INDEX)/{n}"),
            "{}",
            name_of(job)
        );
        // What each pod's firn parses, once Kubernetes expanded the index.
        for i in 0..n {
            let s = shard.replace("$(JOB_COMPLETION_INDEX)", &i.to_string());
            firn::maintain::job::Shard::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        assert!(firn::maintain::job::Shard::parse(&format!("{n}/{n}")).is_err());
        let file = flag(&args, "--job").unwrap();
        let stem = file.strip_prefix("/etc/firn/jobs/").unwrap();
        assert!(repo().join("jobs").join(stem).exists(), "{file}");
    }
}

#[test]
fn ingest_deployment_probes_ports_and_shutdown_grace() {
    let ms = manifests();
    let d = object(&ms, "Deployment", "firn-ingest");
    let template = &d["spec"]["template"];
    let pod = &template["spec"];
    let c = containers(pod)
        .find(|c| args_of(c).first().map(String::as_str) == Some("ingest"))
        .expect("an ingest container");
    let args = args_of(c);
    let addr = flag(&args, "--metrics-addr")
        .or_else(|| env_value(c, "FIRN_METRICS_ADDR"))
        .expect("ingest serves metrics");
    let port = addr.parse::<std::net::SocketAddr>().unwrap().port();
    assert!(
        !addr.starts_with("127."),
        "{addr}: the kubelet cannot probe loopback"
    );

    let ports = c["ports"].as_array().unwrap();
    let resolve = |p: &Value| -> u16 {
        match p {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(name) => ports
                .iter()
                .find(|x| x["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no port named {name}"))["containerPort"]
                .as_u64()
                .unwrap() as u16,
            other => panic!("probe port {other}"),
        }
    };
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        // A startup probe on /readyz would kill workers waiting for partitions.
        ("startupProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        if probe == "startupProbe" && get.is_null() {
            continue;
        }
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve(&get["port"]), port, "{probe} port");
    }
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // SIGTERM commits what is buffered: the grace must outlast a commit
    // interval's worth of flush plus the commit.
    let dir = tempfile::tempdir().unwrap();
    let mut interval = commit_interval(&k8s_firn_toml(&ms, dir.path()));
    if let Some(v) =
        flag(&args, "--commit-interval").or_else(|| env_value(c, "FIRN_COMMIT_INTERVAL"))
    {
        interval = humantime::parse_duration(&v).unwrap();
    }
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) >= interval + Duration::from_secs(60),
        "terminationGracePeriodSeconds {grace} < commit interval {interval:?} + 60 s"
    );

    let selector = d["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let labels = &template["metadata"]["labels"];
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "Deployment selector {k}");
    }
    let pdb = objects(&ms, "PodDisruptionBudget")
        .find(|p| {
            p["spec"]["selector"]["matchLabels"]
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
        })
        .expect("a PodDisruptionBudget for the ingest pods");
    assert!(pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number());
}

#[test]
fn pods_run_unprivileged_and_their_references_resolve() {
    let ms = manifests();
    let secret = object(&ms, "Secret", "firn-credentials");
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .or(secret["data"].as_object())
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut images = BTreeSet::new();
    for (w, pod) in workloads(&ms) {
        let at = format!("{} {}", w["kind"], name_of(w));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{at}");
        assert!(
            pod["securityContext"]["runAsUser"]
                .as_u64()
                .is_some_and(|u| u > 0),
            "{at}"
        );
        if let Some(sa) = pod["serviceAccountName"].as_str() {
            object(&ms, "ServiceAccount", sa);
        }
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        for c in containers(pod) {
            let at = format!("{at} container {}", c["name"]);
            images.insert(str_of(&c["image"], "image").to_string());
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{at}");
            let r = &c["resources"];
            assert!(
                r["requests"]["cpu"].is_string() && r["requests"]["memory"].is_string(),
                "{at}"
            );
            assert!(r["limits"]["memory"].is_string(), "{at}: memory limit");

            for from in c["envFrom"].as_array().cloned().unwrap_or_default() {
                let name = str_of(&from["secretRef"]["name"], "envFrom secretRef");
                assert_eq!(name, name_of(secret), "{at}");
            }
            let env = c["env"].as_array().cloned().unwrap_or_default();
            let args = args_of(c).join(" ");
            for e in &env {
                if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                    assert_eq!(r["name"], name_of(secret), "{at}");
                    assert!(
                        secret_keys.contains(str_of(&r["key"], "key")),
                        "{at}: {}",
                        r["key"]
                    );
                }
                // Variables only Kubernetes uses exist to be expanded in args.
                let name = str_of(&e["name"], "env name");
                if !name.starts_with("FIRN_") && name != "RUST_LOG" {
                    assert!(
                        args.contains(&format!("$({name})")),
                        "{at}: {name} is unused"
                    );
                }
            }
            for m in c["volumeMounts"].as_array().cloned().unwrap_or_default() {
                let v = volumes
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("{at}: no volume {}", m["name"]));
                let Some(cm) = v["configMap"]["name"].as_str() else {
                    continue;
                };
                let data = configmap_data(&ms, cm);
                if let Some(key) = m["subPath"].as_str() {
                    assert!(data.contains_key(key), "{at}: ConfigMap {cm} has no {key}");
                }
                for item in v["configMap"]["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    assert!(data.contains_key(str_of(&item["key"], "key")), "{at}: {cm}");
                }
            }
        }
    }
    assert_eq!(images.len(), 1, "one firn image everywhere: {images:?}");
}

/// Lay a pod's /etc/firn out under `root` as the kubelet does: a ConfigMap
/// volume is a folder of symlinks through `..data` to a timestamped folder,
/// a subPath mount is the one file.
fn mount_pod_files(ms: &[(PathBuf, Value)], pod: &Value, c: &Value, root: &Path) {
    let volumes = pod["volumes"].as_array().unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
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
    let rebase = |s: &str| s.replace("/etc/firn/", &format!("{}/etc/firn/", root.display()));
    let mut env: BTreeMap<String, String> = c["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                rebase(e["value"].as_str()?),
            ))
        })
        .collect();
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let expand = |s: String| {
        env.iter()
            .fold(s, |s, (k, v)| s.replace(&format!("$({k})"), v))
    };
    let args: Vec<String> = args_of(c).iter().map(|a| expand(rebase(a))).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firn"));
    cmd.args(&args)
        .envs(&env)
        .current_dir(lake)
        .env("FIRN_CATALOG_TYPE", "sql")
        .env(
            "FIRN_CATALOG_URI",
            format!("sqlite://{}/catalog.db?mode=rwc", lake.display()),
        )
        .env("FIRN_WAREHOUSE", lake.join("warehouse"))
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn firn_accepts_the_configuration_files() {
    let ms = manifests();
    let dir = tempfile::tempdir().unwrap();
    let systemd = repo().join("deploy/systemd/firn.toml.example");
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

/// A Pushgateway on a free loopback port, stopped when dropped.
struct Pushgateway {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Pushgateway {
    fn start(binary: &Path) -> Self {
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

fn http_get(url: &str) -> Option<String> {
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
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
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
fn sample(
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
    let d = object(&ms, "Deployment", "firn-ingest");
    let pod = &d["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let root = tempfile::tempdir().unwrap();
    mount_pod_files(&ms, pod, init, root.path());
    let out = run_ok(&mut container_command(init, root.path(), lake.path(), &[]));
    assert!(out.contains("usage.http_requests: created"), "{out}");

    // Each CronJob's run, and each shard of the Indexed Job, as written.
    let mut expected = Vec::new();
    for (w, pod) in workloads(&ms).filter(|(w, _)| w["kind"] != "Deployment") {
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

// ----------------------------------------------------------------- systemd

fn systemd_dir() -> PathBuf {
    repo().join("deploy/systemd")
}

/// A systemd unit file: (section, key, value) in order.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn load(path: &Path) -> Self {
        let mut section = String::new();
        let mut entries = Vec::new();
        let text = read(path).replace("\\\n", " ");
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(s) = line.strip_prefix('[') {
                section = s.trim_end_matches(']').to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `{line}`", path.display()));
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Unit(entries)
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key)[..] {
            [v] => v,
            ref vs => panic!("[{section}] {key}: {vs:?}"),
        }
    }
}

/// A cron field's values within `lo..=hi` (`*`, numbers, lists, ranges, steps).
fn cron_values(field: &str, lo: u32, hi: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse().unwrap()),
            None => (part, 1),
        };
        let (a, b) = match range.split_once('-') {
            _ if range == "*" => (lo, hi),
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None if step > 1 => (range.parse().unwrap(), hi),
            None => (range.parse().unwrap(), range.parse().unwrap()),
        };
        out.extend((a..=b).step_by(step));
    }
    out
}

/// The next `n` times after `base` a 5-field cron schedule fires (UTC).
fn cron_next(cron: &str, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let f: Vec<&str> = cron.split_whitespace().collect();
    let (min, hour) = (cron_values(f[0], 0, 59), cron_values(f[1], 0, 23));
    let (dom, mon) = (cron_values(f[2], 1, 31), cron_values(f[3], 1, 12));
    let dow: BTreeSet<u32> = cron_values(f[4], 0, 7).iter().map(|d| d % 7).collect();
    let mut t = base.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        t += chrono::Duration::minutes(1);
        let day_matches = match (f[2] == "*", f[4] == "*") {
            // cron: with both restricted, either one matches.
            (false, false) => {
                dom.contains(&t.day()) || dow.contains(&t.weekday().num_days_from_sunday())
            }
            _ => dom.contains(&t.day()) && dow.contains(&t.weekday().num_days_from_sunday()),
        };
        if min.contains(&t.minute())
            && hour.contains(&t.hour())
            && mon.contains(&t.month())
            && day_matches
        {
            out.push(t);
        }
    }
    out
}

/// The systemd OnCalendar= expression (UTC) of a 5-field cron schedule.
fn cron_to_oncalendar(cron: &str) -> String {
    let f: Vec<&str> = cron.split_whitespace().collect();
    assert_eq!(f.len(), 5, "`{cron}` is not a 5-field cron expression");
    assert!(
        f[2] == "*" || f[4] == "*",
        "`{cron}`: cron ORs day of month and day of week, OnCalendar ANDs them"
    );
    let num = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("`{cron}`: `{s}`"))
    };
    let field = |s: &str, first: u32| -> String {
        let parts: Vec<String> = s
            .split(',')
            .map(|p| match (p, p.strip_prefix("*/"), p.split_once('-')) {
                ("*", _, _) => "*".to_string(),
                (_, Some(step), _) => format!("{first:02}/{}", num(step)),
                (_, _, Some((a, b))) => format!("{:02}..{:02}", num(a), num(b)),
                _ => format!("{:02}", num(p)),
            })
            .collect();
        parts.join(",")
    };
    const DAYS: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let weekdays = match f[4] {
        "*" => String::new(),
        dow => {
            let parts: Vec<String> = dow
                .split(',')
                .map(|p| match p.split_once('-') {
                    Some((a, b)) => format!("{}..{}", DAYS[num(a) as usize], DAYS[num(b) as usize]),
                    None => DAYS[num(p) as usize].to_string(),
                })
                .collect();
            format!("{} ", parts.join(","))
        }
    };
    format!(
        "{weekdays}*-{}-{} {}:{}:00 UTC",
        field(f[3], 1),
        field(f[2], 1),
        field(f[1], 0),
        field(f[0], 0)
    )
}

/// Where `systemd-analyze calendar` says `expr` elapses next after `base`.
fn systemd_next(analyze: &Path, expr: &str, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let out = run_ok(
        Command::new(analyze)
            .arg("calendar")
            .arg(format!("--iterations={n}"))
            .arg(format!(
                "--base-time={}",
                base.format("%Y-%m-%d %H:%M:%S UTC")
            ))
            .arg(expr)
            .env("TZ", "UTC"),
    );
    out.lines()
        .filter(|l| l.contains("Next elapse:") || l.contains("Iter. #"))
        .map(|l| {
            let when = l.split_once(": ").unwrap().1.trim();
            let naive = chrono::NaiveDateTime::parse_from_str(when, "%a %Y-%m-%d %H:%M:%S UTC")
                .unwrap_or_else(|e| panic!("`{when}`: {e}"));
            Utc.from_utc_datetime(&naive)
        })
        .collect()
}

#[test]
fn cron_schedules_convert_to_oncalendar() {
    for (cron, cal) in [
        ("15 * * * *", "*-*-* *:15:00 UTC"),
        ("30 3 * * *", "*-*-* 03:30:00 UTC"),
        ("*/15 * * * *", "*-*-* *:00/15:00 UTC"),
        ("5,35 */2 * * *", "*-*-* 00/2:05,35:00 UTC"),
        ("0 0 1 * *", "*-*-01 00:00:00 UTC"),
        ("0 6 * * 1-5", "Mon..Fri *-*-* 06:00:00 UTC"),
        ("45 23 * 1,7 0", "Sun *-01,07-* 23:45:00 UTC"),
    ] {
        assert_eq!(cron_to_oncalendar(cron), cal, "{cron}");
        let Some(analyze) = system_tool("systemd-analyze") else {
            continue;
        };
        let base = Utc.with_ymd_and_hms(2025, 3, 30, 0, 0, 30).unwrap();
        assert_eq!(
            systemd_next(&analyze, cal, base, 5),
            cron_next(cron, base, 5),
            "{cron} / {cal}"
        );
    }
}

#[test]
fn every_job_file_has_a_systemd_timer_on_its_schedule() {
    let jobs = job_files();
    let dir = systemd_dir();
    let analyze = system_tool("systemd-analyze");
    for (stem, _, schedule) in &jobs {
        let service = Unit::load(&dir.join(format!("firn-{stem}.service")));
        let timer = Unit::load(&dir.join(format!("firn-{stem}.timer")));
        assert_eq!(
            service.one("Service", "Type"),
            "oneshot",
            "firn-{stem}.service"
        );
        let exec: Vec<String> = service
            .one("Service", "ExecStart")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(exec[1], "maintain", "firn-{stem}.service");
        assert_eq!(
            flag(&exec, "--job").as_deref(),
            Some(format!("/etc/firn/jobs/{stem}.toml").as_str())
        );
        let textfile = flag(&exec, "--metrics-file").expect("--metrics-file");
        let textfile = Path::new(&textfile);
        assert_eq!(
            textfile.file_name().unwrap(),
            format!("firn-{stem}.prom").as_str()
        );
        let writable = service.all("Service", "ReadWritePaths");
        assert!(
            writable.contains(&textfile.parent().unwrap().to_str().unwrap()),
            "{writable:?}"
        );

        let calendar = timer.one("Timer", "OnCalendar");
        assert_eq!(
            calendar,
            cron_to_oncalendar(schedule),
            "firn-{stem}.timer vs jobs/{stem}.toml"
        );
        assert_eq!(timer.one("Timer", "Persistent"), "true");
        assert_eq!(timer.one("Install", "WantedBy"), "timers.target");
        if let Some(analyze) = &analyze {
            let base = Utc::now().with_second(30).unwrap();
            assert_eq!(
                systemd_next(analyze, calendar, base, 3),
                cron_next(schedule, base, 3)
            );
        }
    }
    // No unit runs a job file that does not exist.
    for path in with_extension(&dir, &["service"]) {
        let unit = Unit::load(&path);
        for exec in unit.all("Service", "ExecStart") {
            let exec: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
            if let Some(job) = flag(&exec, "--job") {
                let file = job.strip_prefix("/etc/firn/jobs/").unwrap();
                assert!(
                    repo().join("jobs").join(file).exists(),
                    "{}: {job}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn ingest_unit_stops_gracefully() {
    let unit = Unit::load(&systemd_dir().join("firn-ingest.service"));
    assert_eq!(
        unit.one("Service", "ExecStart"),
        "/usr/local/bin/firn ingest"
    );
    assert_eq!(unit.one("Service", "KillSignal"), "SIGTERM");
    assert_eq!(unit.one("Service", "Restart"), "on-failure");
    let stop = humantime::parse_duration(unit.one("Service", "TimeoutStopSec")).unwrap();
    let interval = commit_interval(&systemd_dir().join("firn.toml.example"));
    assert!(
        stop >= interval + Duration::from_secs(60),
        "TimeoutStopSec {stop:?}"
    );
    let env = unit.all("Service", "Environment");
    assert!(
        env.iter().any(|e| e.starts_with("FIRN_METRICS_ADDR=")),
        "{env:?}"
    );
}

/// The units with ExecStart pointing at the built binary, in a folder.
fn units_for_verify() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for path in with_extension(&systemd_dir(), &["service", "timer"]) {
        let text = read(&path).replace("/usr/local/bin/firn", env!("CARGO_BIN_EXE_firn"));
        std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

#[test]
fn systemd_units_verify_and_are_sandboxed() {
    let Some(analyze) = system_tool("systemd-analyze") else {
        return;
    };
    let dir = units_for_verify();
    let units: Vec<PathBuf> = files_under(dir.path());
    assert!(units.len() >= 5, "{units:?}");
    let (ok, stdout, stderr) = run(Command::new(&analyze).arg("verify").args(&units));
    assert!(
        ok && stdout.is_empty() && stderr.is_empty(),
        "systemd-analyze verify:\n{stdout}\n{stderr}"
    );
    // Exposure below 2.0 on systemd's 0-10 scale ("OK").
    for unit in units.iter().filter(|p| p.extension().unwrap() == "service") {
        let (ok, stdout, stderr) = run(Command::new(&analyze)
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(unit));
        let last = stdout.lines().last().unwrap_or_default();
        assert!(ok, "{}: {last}\n{stderr}", unit.display());
    }
}

#[test]
fn systemd_user_and_textfile_directory_are_created() {
    let (Some(sysusers), Some(tmpfiles)) = (
        system_tool("systemd-sysusers"),
        system_tool("systemd-tmpfiles"),
    ) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    run_ok(
        Command::new(sysusers)
            .arg(format!("--root={}", root.path().display()))
            .arg(systemd_dir().join("firn.sysusers")),
    );
    let passwd = read(&root.path().join("etc/passwd"));
    assert!(passwd.lines().any(|l| l.starts_with("firn:")), "{passwd}");

    // The ACL names the firn group, which this machine lacks: name ours.
    let group = run_ok(Command::new("id").arg("-gn")).trim().to_string();
    let conf = root.path().join("firn.conf");
    let text = read(&systemd_dir().join("firn.tmpfiles"));
    assert!(text.contains("group:firn:rwx"), "{text}");
    std::fs::write(
        &conf,
        text.replace("group:firn:", &format!("group:{group}:")),
    )
    .unwrap();
    let (ok, stdout, stderr) = run(Command::new(tmpfiles)
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(&conf));
    assert!(
        ok && stderr.is_empty(),
        "systemd-tmpfiles:\n{stdout}\n{stderr}"
    );
    let service = Unit::load(&systemd_dir().join("firn-hourly.service"));
    for dir in service.all("Service", "ReadWritePaths") {
        assert!(
            root.path().join(dir.trim_start_matches('/')).is_dir(),
            "{dir}"
        );
    }
}

#[test]
fn systemd_commands_run_and_write_the_textfile() {
    let Some(promtool) = target_tool("promtool") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/firn");
    for dir in ["schemas", "jobs"] {
        std::fs::create_dir_all(etc.join(dir)).unwrap();
        for f in with_extension(&repo().join(dir), &["toml"]) {
            std::fs::copy(&f, etc.join(dir).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        systemd_dir().join("firn.toml.example"),
        etc.join("firn.toml"),
    )
    .unwrap();
    let rebase = |s: &str| {
        s.replace(
            "/etc/firn/",
            &format!("{}/etc/firn/", root.path().display()),
        )
        .replace("/var/lib/", &format!("{}/var/lib/", root.path().display()))
        .replace("/usr/local/bin/firn", env!("CARGO_BIN_EXE_firn"))
    };
    let lake = root.path().join("var/lib/firn");
    std::fs::create_dir_all(&lake).unwrap();
    let unit_command = |unit: &Unit, exec: &str| {
        let words: Vec<String> = exec.split_whitespace().map(rebase).collect();
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]).current_dir(&lake);
        for e in unit.all("Service", "Environment") {
            let (k, v) = e.split_once('=').unwrap();
            cmd.env(k, rebase(v));
        }
        cmd.env(
            "FIRN_CATALOG_URI",
            format!("sqlite://{}/catalog.db?mode=rwc", lake.display()),
        )
        .env("FIRN_WAREHOUSE", lake.join("warehouse"))
        .env("RUST_LOG", "warn");
        cmd
    };
    let ingest = Unit::load(&systemd_dir().join("firn-ingest.service"));
    for pre in ingest.all("Service", "ExecStartPre") {
        run_ok(&mut unit_command(&ingest, pre));
    }
    for (stem, _, _) in job_files() {
        let unit = Unit::load(&systemd_dir().join(format!("firn-{stem}.service")));
        let exec = unit.one("Service", "ExecStart");
        let textfile = PathBuf::from(rebase(
            &flag(
                &exec
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
                "--metrics-file",
            )
            .unwrap(),
        ));
        std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
        run_ok(&mut unit_command(&unit, exec));
        let text = read(&textfile);
        let all = samples(&text);
        let labels = [("job", stem.as_str()), ("shard", "")];
        assert_eq!(
            sample(&all, "firn_job_success", &labels),
            Some(1.0),
            "{text}"
        );
        let mut check = Command::new(&promtool);
        check
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&textfile).unwrap());
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
                for e in c["env"].as_array().cloned().unwrap_or_default() {
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
    let dockerfile = repo().join("deploy/container/Dockerfile");
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

// -------------------------------------------------- Prometheus and Grafana

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

fn dashboard() -> Value {
    serde_json::from_str(&read(&repo().join("deploy/grafana/firn.json"))).unwrap()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p.clone());
        out.extend(p["panels"].as_array().cloned().unwrap_or_default());
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets and variable
/// queries): (where, expr), Grafana's variables as written.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
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
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
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
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(dir.path()),
    );
    assert!(out.contains("SUCCESS"), "{out}");
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

// --------------------------------------------------------------- container

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
    let path = repo().join("deploy/container/Dockerfile");
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
