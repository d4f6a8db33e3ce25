#!/usr/bin/env bash
# The main job on the embedded default, on one machine: a tansu broker on
# 127.0.0.1 (installed if missing), the SQLite catalog and local warehouse in
# ./firn-data, 100,000 generated events (1% malformed) ingested exactly once,
# then the table's status. Stops the broker it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
deploy/local/install-tansu.sh
cargo build --release --bin firn
firn=target/release/firn

port=9092
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
mkdir -p firn-data
(cd firn-data && exec tansu broker --storage-engine sqlite://tansu.db \
  --kafka-listener-url tcp://127.0.0.1:$port \
  --kafka-advertised-listener-url tcp://127.0.0.1:$port) > firn-data/tansu.log 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.2
done
export FIRN_BROKERS=127.0.0.1:$port

$firn tables sync
$firn produce --count 100000 --bad-ratio 0.01 --create-topic 4 | tee firn-data/produced.json
$firn ingest --commit-interval 5s --stop-when-idle 5s
$firn status
