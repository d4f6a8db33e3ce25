#!/usr/bin/env bash
# End to end from a broker: `firn ingest` drains a topic of generated events
# (2,000,000 by default) from offset 0 into a fresh
# table, beside a bare librdkafka consumer (examples/bare_consumer.rs)
# draining the same topic with no processing; prints both rates and their
# ratio. Then `firn
# backfill` of the same number of generated events from a local gzip NDJSON
# file into another fresh table: events/s and peak RSS.
#
# tansu's memory engine (fast, and correct for a fresh topic read from
# offset 0; see LOCAL-STACK.md) on 127.0.0.1, installed if missing and
# stopped at the end; the SQLite catalog and local files in a temporary
# folder. tansu's memory engine holds every fetch for fetch.wait.max.ms
# (librdkafka's default 500 ms) whatever it holds, so both consumers run
# with `fetch.wait.max.ms=10` (`FIRN_BENCH_FETCH_WAIT_MS`); a Kafka broker
# answers a fetch as soon as it has data. firn's rate counts from its
# assignment to the commit that holds the last event, so the group join is
# not counted against it and the commits are. firn commits every 100 ms
# here (`FIRN_BENCH_COMMIT_INTERVAL`): a drain takes a second or two, and
# with a commit a second the last records would wait up to a second for
# the timer, which measures the interval, not the ingest.
#
#   benches/ingest_e2e.sh
#   FIRN_BENCH_ACCOUNTS=1 FIRN_BENCH_SPREAD=2m benches/ingest_e2e.sh  # tens of events a row
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
events=${FIRN_BENCH_EVENTS:-2000000}
partitions=${FIRN_BENCH_PARTITIONS:-4}
accounts=${FIRN_BENCH_ACCOUNTS:-1000}
spread=${FIRN_BENCH_SPREAD:-2h}
threads=${FIRN_THREADS:-$(nproc)}
idle=2
fetch_wait=${FIRN_BENCH_FETCH_WAIT_MS:-10}
commit_interval=${FIRN_BENCH_COMMIT_INTERVAL:-100ms}
deploy/local/install-tansu.sh >/dev/null
cargo build --release --bin firn --example bare_consumer
firn=$PWD/target/release/firn
bare=$PWD/target/release/examples/bare_consumer

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$dir" && exec tansu broker --storage-engine memory://tansu/ \
  --kafka-listener-url tcp://127.0.0.1:$port \
  --kafka-advertised-listener-url tcp://127.0.0.1:$port) > "$dir/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; [ -n "${FIRN_BENCH_KEEP:-}" ] || rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.2
done
export FIRN_BROKERS=127.0.0.1:$port
cp -r schemas "$dir/"
cd "$dir"
$firn tables sync >/dev/null
$firn produce --count "$events" --accounts "$accounts" --spread "$spread" \
  --create-topic "$partitions" > produced.json

$bare "127.0.0.1:$port" http-requests "$events" fetch.wait.max.ms=$fetch_wait > bare.json
FIRN_LOG_FORMAT=json /usr/bin/time -f '%M' -o rss.txt \
  $firn ingest --threads "$threads" --commit-interval "$commit_interval" --stop-when-idle ${idle}s \
  --kafka-property fetch.wait.max.ms=$fetch_wait 2> ingest.log

# Backfill: the same kind of events from a local gzip file.
$firn produce --count "$events" --accounts "$accounts" --spread "$spread" \
  --to-file events.ndjson.gz > file.json
mkdir -p backfill && cp -r schemas backfill/ && cd backfill
$firn tables sync >/dev/null
/usr/bin/time -f '%e %M' -o ../backfill-time.txt \
  $firn backfill usage.http_requests --input ../events.ndjson.gz > ../backfill.json 2> ../backfill.log
cd ..

python3 - "$events" "$threads" "$idle" "$commit_interval" <<'PY'
import datetime, json, sys
events, threads, idle, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
bare = json.load(open("bare.json"))
def ts(line):
    return datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
lines = [json.loads(l) for l in open("ingest.log") if l.startswith("{")]
assigned = [ts(l) for l in lines if l.get("message", "").startswith("assigned; positioned")]
flushed = [l for l in lines if l.get("message") == "flushed"]
records, done = 0, None
for l in flushed:
    records += int(l.get("records", 0))
    if done is None and records >= events:
        done = ts(l)
done = done if done is not None else ts(flushed[-1]) - idle
seconds = done - assigned[0]
firn = records / seconds
rss = int(open("rss.txt").read().split()[-1]) / 1024
print(f"bare librdkafka consumer: {bare['records']} records in {bare['seconds']:.2f} s = {bare['records_per_second']:.0f} records/s")
print(f"firn ingest ({threads} threads, a commit every {interval}): {records} records in {seconds:.2f} s = {firn:.0f} records/s, {len(flushed)} commits, peak RSS {rss:.0f} MiB")
print(f"(files in {__import__('os').getcwd()})") if __import__('os').environ.get("FIRN_BENCH_KEEP") else None
print(f"firn / bare consumer: {firn / bare['records_per_second']:.2f}")
print(json.dumps({"events": events, "threads": threads, "commit_interval": interval, "bare_records_per_s": round(bare["records_per_second"]),
                  "firn_records_per_s": round(firn), "ratio": firn / bare["records_per_second"],
                  "firn_records": records, "firn_commits": len(flushed), "firn_peak_rss_mib": rss}))
seconds_b, rss_b = open("backfill-time.txt").read().split()
seconds_b, rss_b = float(seconds_b), int(rss_b) / 1024
print(f"firn backfill of a gzip NDJSON file: {events} events in {seconds_b:.2f} s = {events / seconds_b:.0f} events/s (whole command), peak RSS {rss_b:.0f} MiB")
print(json.dumps({"backfill_events": events, "backfill_seconds": seconds_b, "backfill_events_per_s": round(events / seconds_b), "backfill_peak_rss_mib": rss_b}))
if records != events:
    sys.exit(f"firn committed {records} records of {events}")
PY
