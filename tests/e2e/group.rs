//! The ingest worker as a consumer-group member, against a real tansu
//! broker: when it is assigned late (the group waits out a dead member's
//! session) `--stop-when-idle` still drains the backlog, and with
//! `--instance-id` (Kafka static membership) a worker restarted after a
//! crash takes its partitions back without waiting for its old session.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use firn::produce::ProduceOptions;

use crate::common::{Broker, Lake, terminate};

const WAIT: Duration = Duration::from_secs(600);

/// Wait for `child` to exit, up to `limit`; `None` if it is still running.
async fn exited_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until worker `name`'s log holds `text`; how long that took.
async fn log_shows(lake: &Lake, name: &str, text: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while !lake.log(name).contains(text) {
        assert!(
            started.elapsed() < limit,
            "worker {name} did not log `{text}` within {limit:?}:\n{}",
            lake.log(name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// A member killed while holding the partitions keeps them for its session;
/// a worker started meanwhile with `--stop-when-idle` is assigned only once
/// that session expired, long after its idle limit counted from its start.
/// It must still consume and commit the whole backlog before it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_when_idle_drains_the_backlog_of_a_late_assignment() {
    const SESSION: &str = "session.timeout.ms=12000";
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;

    let mut dead = lake.spawn_ingest("dead", &["--kafka-property", SESSION]);
    log_shows(&lake, "dead", "assigned;", Duration::from_secs(120)).await;
    dead.kill().unwrap();
    dead.wait().unwrap();
    let report = lake
        .produce(ProduceOptions {
            count: 20_000,
            seed: 71,
            ..Default::default()
        })
        .await;

    let started = Instant::now();
    let mut late = lake.spawn_ingest("late", &["--stop-when-idle", "2s"]);
    let status = exited_within(&mut late, Duration::from_secs(300)).await;
    let took = started.elapsed();
    if status.is_none() {
        terminate(&mut late);
    }
    let log = lake.log("late");
    let assigned_after = log.contains("assigned;");
    let committed = lake.committed_records(catalog.as_ref()).await;
    eprintln!(
        "MEASURE late assignment: worker stopped after {took:?} with {committed} of {} records \
         committed",
        report.sent
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(assigned_after, "{log}");
    assert_eq!(
        committed, report.sent as i64,
        "stopped with a backlog in the topic:\n{log}"
    );
    assert!(log.contains("idle and caught up; stopping"), "{log}");
}

/// With `--instance-id`, a worker killed and restarted under the same id
/// is assigned its partitions again well before its old session (45 s,
/// librdkafka's default) could have expired, and totals stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_takes_its_partitions_back_at_once() {
    const SESSION: Duration = Duration::from_secs(45);
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(3).await;
    lake.run(&["tables", "sync"]);
    let catalog = lake.catalog().await;
    let session = format!("session.timeout.ms={}", SESSION.as_millis());
    let member = [
        "--instance-id",
        "firn-ingest-0",
        "--kafka-property",
        &session,
    ];

    let mut first = lake.spawn_ingest("first", &member);
    log_shows(&lake, "first", "assigned;", Duration::from_secs(120)).await;
    let one = lake
        .produce(ProduceOptions {
            count: 5_000,
            seed: 81,
            ..Default::default()
        })
        .await;
    lake.wait_for_offsets(catalog.as_ref(), one.sent as i64, WAIT)
        .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = Instant::now();

    let two = lake
        .produce(ProduceOptions {
            count: 5_000,
            seed: 82,
            ..Default::default()
        })
        .await;
    let mut second = lake.spawn_ingest("second", &member);
    let assigned = log_shows(&lake, "second", "assigned;", WAIT).await;
    lake.wait_for_offsets(catalog.as_ref(), (one.sent + two.sent) as i64, WAIT)
        .await;
    let caught_up = killed.elapsed();
    eprintln!(
        "MEASURE static member restart: assigned {assigned:?} after its start, the second \
         batch committed {caught_up:?} after the kill (session {SESSION:?})"
    );
    assert!(
        caught_up < SESSION,
        "the restarted member waited for its old session:\n{}",
        lake.log("second")
    );
    assert!(terminate(&mut second).success(), "{}", lake.log("second"));
}
