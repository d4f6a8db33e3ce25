//! What a backfill is, and where a rerun resumes: a replay of a live topic
//! keeps the identity of the range it was asked for, and any rerun of the
//! same command — with another `--chunk-events`, or a `--force` run's —
//! continues exactly where the committed part ends.

use std::process::{Command, Stdio};

use firn::produce::ProduceOptions;

use super::{
    assert_holds, backfill, backfill_command, kill_at_snapshots, killed_backfill, lake_with_inputs,
    rejects, replay_command, snapshot_count, succeeded, totals,
};
use crate::common::{Broker, Lake};

/// `firn backfill` replaying partitions 0 and 1 of the table's topic from
/// offset 0, in chunks of 500.
fn replay(lake: &Lake) -> Command {
    replay_command(
        lake,
        "http-requests",
        &["--start-offsets", "0:0,1:0", "--chunk-events", "500"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_live_topic_is_the_range_it_was_asked_for() {
    let broker = Broker::start();
    let lake = Lake::new(&broker);
    lake.create_topic(2).await;
    lake.run(&["tables", "sync"]);
    let decl = lake.decl();
    let asked = lake
        .produce(ProduceOptions {
            count: 12_000,
            seed: 21,
            ..Default::default()
        })
        .await;

    let mut child = replay(&lake)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at_snapshots(&lake, &mut child, 4).await;
    let at_kill = totals(&lake).await.long(&decl, "requests");

    // The topic moves on while the replay is down.
    let later = lake
        .produce(ProduceOptions {
            count: 3_000,
            seed: 22,
            ..Default::default()
        })
        .await;
    let report = succeeded(&replay(&lake).output().unwrap());
    let held = totals(&lake).await.long(&decl, "requests");
    eprintln!(
        "MEASURE live-topic resume: {at_kill} events committed before the kill; after the rerun \
         the table counts {held} of the {} the asked range held ({} produced since)",
        asked.valid, later.valid
    );
    assert_eq!(
        held,
        asked.valid as i64,
        "the rerun of the same replay counted {} events more than the range it was asked for \
         ({at_kill} committed before the kill; report {report})",
        held - asked.valid as i64
    );
    assert_eq!(
        serde_json::json!(totals(&lake).await.long(&decl, "bytes")),
        asked.totals["bytes"]
    );

    // Finished, the same command is refused, though the topic grew again.
    lake.produce(ProduceOptions {
        count: 1_000,
        seed: 23,
        ..Default::default()
    })
    .await;
    let again = replay(&lake).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success(),
        "a finished replay ran again: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert!(err.contains("already committed"), "{err}");
    assert_eq!(
        totals(&lake).await.long(&decl, "requests"),
        asked.valid as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_another_chunk_size_adds_every_event_once() {
    let (lake, data, inputs) = killed_backfill(4_000, 5).await;
    let decl = lake.decl();
    let at_kill = totals(&lake).await.long(&decl, "requests");

    let report = succeeded(&backfill(&lake, data.path(), &["--chunk-events", "700"]));
    let t = totals(&lake).await;
    let expected = inputs.lines as i64 - inputs.malformed as i64;
    eprintln!(
        "MEASURE resume with another chunk size: {at_kill} events committed before the kill, \
         {} after the rerun, {expected} in the inputs; {} rejects of {}",
        t.long(&decl, "requests"),
        rejects(&lake).await.len(),
        inputs.malformed
    );
    assert_eq!(
        t.long(&decl, "requests"),
        expected,
        "the resume with --chunk-events 700 after chunks of 500 is off by {} events ({report})",
        t.long(&decl, "requests") - expected
    );
    assert_holds(&lake, &inputs).await;
    assert_eq!(rejects(&lake).await.len() as u64, inputs.malformed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_forced_backfill_resumes() {
    let (lake, data, inputs) = lake_with_inputs(3_000);
    let decl = lake.decl();
    succeeded(&backfill(&lake, data.path(), &[]));
    let once = inputs.lines as i64 - inputs.malformed as i64;
    let snapshots = snapshot_count(&lake).await;

    let forced = || backfill_command(&lake, data.path(), &["--force", "--chunk-events", "500"]);
    let mut child = forced()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at_snapshots(&lake, &mut child, snapshots + 4).await;
    let at_kill = totals(&lake).await.long(&decl, "requests") - once;

    let report = succeeded(&forced().output().unwrap());
    let held = totals(&lake).await.long(&decl, "requests");
    eprintln!(
        "MEASURE forced resume: the killed forced run had added {at_kill} events; after its \
         rerun the table counts {held}, twice the inputs is {}",
        2 * once
    );
    assert_eq!(
        held,
        2 * once,
        "the rerun of a killed --force run started over: {} events counted a third time \
         ({report})",
        held - 2 * once
    );
    assert_eq!(
        rejects(&lake).await.len() as u64,
        2 * inputs.malformed,
        "each run records its rejects once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_close_at_their_row_bound_and_count_every_event_once() {
    let (lake, data, inputs) = lake_with_inputs(3_000);
    let report = succeeded(&backfill(&lake, data.path(), &["--chunk-rows", "400"]));
    let rows: u64 = report["rows_by_grain"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let chunks = report["chunks_committed"].as_u64().unwrap();
    eprintln!("MEASURE --chunk-rows 400: {rows} rows in {chunks} chunks ({report})");
    // A chunk closes within a check's worth of events past its bound.
    assert!(
        rows > 2_000,
        "the inputs make too few rows to test the bound: {report}"
    );
    assert!(
        chunks >= rows.div_ceil(400 + 256),
        "{chunks} chunks for {rows} rows with --chunk-rows 400: {report}"
    );
    assert_holds(&lake, &inputs).await;
    assert_eq!(rejects(&lake).await.len() as u64, inputs.malformed);
}
