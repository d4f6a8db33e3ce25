//! deploy/kubernetes: the manifests validate against the API schemas, every
//! job file has one CronJob on its schedule, the ingest StatefulSet's probes
//! and shutdown grace fit firn and its workers are static group members
//! named after their pods, pods run unprivileged with references that
//! resolve, and the containers' commands run for real.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    INSTALLED_JOBS, array_of, commit_interval, flag, is_repo_job, job_files, repo, run_ok, str_of,
    system_tool, venv_tool, with_extension, yaml_documents,
};

pub(super) fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The manifest files, without kustomization.yaml.
fn manifest_files() -> Vec<PathBuf> {
    with_extension(&k8s_dir(), &["yaml", "yml"])
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect()
}

/// Every Kubernetes object under deploy/kubernetes: (file, object).
pub(super) fn manifests() -> Vec<(PathBuf, Value)> {
    manifest_files()
        .into_iter()
        .flat_map(|p| yaml_documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn kustomization() -> Value {
    yaml_documents(&k8s_dir().join("kustomization.yaml")).remove(0)
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

pub(super) fn object<'a>(ms: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    objects(ms, kind)
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn name_of(d: &Value) -> &str {
    str_of(&d["metadata"]["name"], "metadata.name")
}

/// The pod template of a workload.
pub(super) fn pod_template(d: &Value) -> Option<&Value> {
    match d["kind"].as_str()? {
        "StatefulSet" | "Job" => Some(&d["spec"]["template"]),
        "CronJob" => Some(&d["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    }
}

pub(super) fn workloads(ms: &[(PathBuf, Value)]) -> impl Iterator<Item = (&Value, &Value)> {
    ms.iter()
        .filter_map(|(_, d)| pod_template(d).map(|t| (d, &t["spec"])))
}

/// A pod's init containers, then its containers.
pub(super) fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |k| pod[k].as_array().into_iter().flatten())
}

pub(super) fn args_of(c: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .flat_map(|k| array_of(&c[*k]))
        .map(|a| str_of(&a, "an argument").to_string())
        .collect()
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// The volume of `pod` that a container's volume mount names.
pub(super) fn volume_of<'a>(pod: &'a Value, mount: &Value) -> Option<&'a Value> {
    pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])
}

pub(super) fn configmap_data(ms: &[(PathBuf, Value)], name: &str) -> BTreeMap<String, String> {
    let cm = object(ms, "ConfigMap", name);
    cm["data"]
        .as_object()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no data"))
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v, k).to_string()))
        .collect()
}

/// The ConfigMap firn.toml of the ingest workers, on disk (for firn to load).
pub(super) fn k8s_firn_toml(ms: &[(PathBuf, Value)], dir: &Path) -> PathBuf {
    let path = dir.join("firn.toml");
    std::fs::write(&path, &configmap_data(ms, "firn-config")["firn.toml"]).unwrap();
    path
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let Some(validate) = venv_tool("kubernetes-validate") else {
        return;
    };
    // --strict refuses fields the API does not know (a misplaced key would
    // otherwise be dropped silently by the API server).
    let validate = |files: &[PathBuf]| {
        run_ok(
            Command::new(&validate)
                .args(["--kubernetes-version", "1.30.0", "--strict", "--quiet"])
                .args(files),
        )
    };
    validate(&manifest_files());

    // What `kubectl apply -k` sends, when kubectl (with kustomize) is here.
    let Some(kubectl) = system_tool("kubectl") else {
        return;
    };
    let built = run_ok(Command::new(kubectl).arg("kustomize").arg(k8s_dir()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("built.yaml");
    std::fs::write(&out, &built).unwrap();
    validate(std::slice::from_ref(&out));
    let built = yaml_documents(&out);
    let image = &kustomization()["images"][0];
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
    let kustomization = kustomization();
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
            .strip_prefix(INSTALLED_JOBS)
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
        let volume = volume_of(pod, mount).unwrap();
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
            firn::maintain::Shard::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        assert!(firn::maintain::Shard::parse(&format!("{n}/{n}")).is_err());
        let file = flag(&args, "--job").unwrap();
        assert!(is_repo_job(&file), "{file}");
    }
}

#[test]
fn ingest_statefulset_probes_ports_and_shutdown_grace() {
    let ms = manifests();
    let d = object(&ms, "StatefulSet", "firn-ingest");
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
        assert_eq!(&labels[k], v, "StatefulSet selector {k}");
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

/// Where a container's variable `name` comes from: `fieldRef` paths,
/// followed through `$(VAR)` references to earlier variables.
fn env_field_ref(c: &Value, name: &str) -> Option<String> {
    let e = array_of(&c["env"])
        .into_iter()
        .find(|e| e["name"] == name)?;
    if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        return Some(path.to_string());
    }
    let value = e["value"].as_str()?;
    let inner = value.strip_prefix("$(")?.strip_suffix(')')?;
    env_field_ref(c, inner)
}

/// The ingest workers are Kafka static members (`group.instance.id`) named
/// after their pods, and the pods keep their names across restarts (a
/// StatefulSet): a restarted worker rejoins as itself and gets its
/// partitions back at once.
#[test]
fn ingest_workers_are_static_members_named_after_their_pods() {
    let ms = manifests();
    let ingest: Vec<(&Value, &Value)> = workloads(&ms)
        .filter(|(_, pod)| {
            containers(pod).any(|c| args_of(c).first().map(String::as_str) == Some("ingest"))
        })
        .collect();
    assert_eq!(ingest.len(), 1, "one ingest workload");
    let (w, pod) = ingest[0];
    assert_eq!(
        w["kind"], "StatefulSet",
        "a Deployment's pods get new names on every restart"
    );
    let c = containers(pod)
        .find(|c| args_of(c).first().map(String::as_str) == Some("ingest"))
        .unwrap();
    let from = match flag(&args_of(c), "--instance-id") {
        Some(arg) => {
            let var = arg
                .strip_prefix("$(")
                .and_then(|v| v.strip_suffix(')'))
                .unwrap_or_else(|| panic!("--instance-id {arg} is not the pod's name"));
            env_field_ref(c, var)
        }
        None => env_field_ref(c, "FIRN_INSTANCE_ID"),
    };
    assert_eq!(from.as_deref(), Some("metadata.name"), "{}", c["env"]);
    // The variable is the one firn reads.
    let help = run_ok(Command::new(env!("CARGO_BIN_EXE_firn")).args(["ingest", "--help"]));
    assert!(help.contains("env: FIRN_INSTANCE_ID="), "{help}");
    // The StatefulSet's headless Service exists and selects its pods.
    let service = object(
        &ms,
        "Service",
        str_of(&w["spec"]["serviceName"], "serviceName"),
    );
    assert_eq!(service["spec"]["clusterIP"], "None");
    let labels = &w["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "Service selector {k}");
    }
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

            for from in array_of(&c["envFrom"]) {
                let name = str_of(&from["secretRef"]["name"], "envFrom secretRef");
                assert_eq!(name, name_of(secret), "{at}");
            }
            let args = args_of(c).join(" ");
            for e in &array_of(&c["env"]) {
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
            for m in array_of(&c["volumeMounts"]) {
                let v =
                    volume_of(pod, &m).unwrap_or_else(|| panic!("{at}: no volume {}", m["name"]));
                let Some(cm) = v["configMap"]["name"].as_str() else {
                    continue;
                };
                let data = configmap_data(&ms, cm);
                if let Some(key) = m["subPath"].as_str() {
                    assert!(data.contains_key(key), "{at}: ConfigMap {cm} has no {key}");
                }
                for item in array_of(&v["configMap"]["items"]) {
                    assert!(data.contains_key(str_of(&item["key"], "key")), "{at}: {cm}");
                }
            }
        }
    }
    assert_eq!(images.len(), 1, "one firn image everywhere: {images:?}");
}
