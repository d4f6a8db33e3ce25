//! deploy/systemd: every job file has a service and a timer on its schedule,
//! the ingest unit stops gracefully, the units verify and are sandboxed, the
//! user and textfile directory get created, and the units' commands run for
//! real and write their metrics textfile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{Timelike, Utc};

use super::cron::{assert_fires_alike, cron_to_oncalendar};
use super::metrics::{sample, samples};
use super::{
    INSTALLED_JOBS, commit_interval, files_under, flag, is_repo_job, job_files, on_local_lake,
    read, rebase, repo, run, run_ok, system_tool, target_tool, with_extension,
};

pub(super) fn systemd_dir() -> PathBuf {
    repo().join("deploy/systemd")
}

/// The words of an ExecStart= or ExecStartPre= command line.
fn words(exec: &str) -> Vec<String> {
    exec.split_whitespace().map(str::to_string).collect()
}

/// `text` with the installed binary's path replaced by the built binary's.
fn with_built_firn(text: &str) -> String {
    text.replace("/usr/local/bin/firn", env!("CARGO_BIN_EXE_firn"))
}

/// A systemd unit file: (section, key, value) in order.
pub(super) struct Unit(Vec<(String, String, String)>);

impl Unit {
    pub(super) fn load(path: &Path) -> Self {
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

    pub(super) fn all(&self, section: &str, key: &str) -> Vec<&str> {
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
        let exec = words(service.one("Service", "ExecStart"));
        assert_eq!(exec[1], "maintain", "firn-{stem}.service");
        assert_eq!(
            flag(&exec, "--job").as_deref(),
            Some(format!("{INSTALLED_JOBS}{stem}.toml").as_str())
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
            assert_fires_alike(analyze, schedule, calendar, base, 3);
        }
    }
    // No unit runs a job file that does not exist.
    for path in with_extension(&dir, &["service"]) {
        let unit = Unit::load(&path);
        for exec in unit.all("Service", "ExecStart") {
            if let Some(job) = flag(&words(exec), "--job") {
                assert!(is_repo_job(&job), "{}: {job}", path.display());
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
    // A static group member under the host's name (one worker per host).
    assert!(env.contains(&"FIRN_INSTANCE_ID=%H"), "{env:?}");
}

/// The listeners the units open: FIRN_METRICS_ADDR and --metrics-addr.
fn metrics_addrs(unit: &Unit) -> Vec<String> {
    let env = unit
        .all("Service", "Environment")
        .into_iter()
        .filter_map(|e| {
            e.strip_prefix("FIRN_METRICS_ADDR=")
                .map(|v| v.trim_matches('"').to_string())
        });
    let flags = unit
        .all("Service", "ExecStart")
        .into_iter()
        .filter_map(|exec| flag(&words(exec), "--metrics-addr"));
    env.chain(flags).collect()
}

/// On a host, /metrics, /healthz and /readyz (unauthenticated) listen on
/// loopback unless the host's firn.env says otherwise, as it documents.
#[test]
fn systemd_listeners_are_on_loopback_unless_configured() {
    let mut listeners = 0;
    for path in with_extension(&systemd_dir(), &["service"]) {
        for addr in metrics_addrs(&Unit::load(&path)) {
            let parsed: std::net::SocketAddr = addr.parse().unwrap();
            assert!(parsed.ip().is_loopback(), "{}: {addr}", path.display());
            listeners += 1;
        }
    }
    assert!(listeners >= 1, "the ingest unit serves its metrics");
    let env = read(&systemd_dir().join("firn.env.example"));
    assert!(
        env.lines()
            .any(|l| l.trim_start_matches('#').starts_with("FIRN_METRICS_ADDR=")),
        "firn.env.example shows how to open the endpoints"
    );
}

/// The units with ExecStart pointing at the built binary, in a folder.
fn units_for_verify() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for path in with_extension(&systemd_dir(), &["service", "timer"]) {
        let text = with_built_firn(&read(&path));
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
    let installed =
        |s: &str| with_built_firn(&rebase(s, root.path(), &["/etc/firn/", "/var/lib/"]));
    let lake = root.path().join("var/lib/firn");
    std::fs::create_dir_all(&lake).unwrap();
    let unit_command = |unit: &Unit, exec: &str| {
        let words: Vec<String> = exec.split_whitespace().map(installed).collect();
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        for e in unit.all("Service", "Environment") {
            let (k, v) = e.split_once('=').unwrap();
            cmd.env(k, installed(v));
        }
        on_local_lake(&mut cmd, &lake);
        cmd
    };
    let ingest = Unit::load(&systemd_dir().join("firn-ingest.service"));
    for pre in ingest.all("Service", "ExecStartPre") {
        run_ok(&mut unit_command(&ingest, pre));
    }
    for (stem, _, _) in job_files() {
        let unit = Unit::load(&systemd_dir().join(format!("firn-{stem}.service")));
        let exec = unit.one("Service", "ExecStart");
        let textfile = PathBuf::from(installed(&flag(&words(exec), "--metrics-file").unwrap()));
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
        // firn_audit_inconsistent_days counts days (a number of days found
        // inconsistent, not a duration), which promtool's unit lint cannot
        // tell; every other finding fails.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let findings: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !l.starts_with(
                    "firn_audit_inconsistent_days use base unit \"seconds\" instead of \"days\"",
                )
            })
            .collect();
        assert!(
            out.status.success() || findings.is_empty(),
            "promtool check metrics: {stderr}"
        );
    }
}
