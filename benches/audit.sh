#!/usr/bin/env bash
# `firn audit` on the rollup bench's table: one week of minute rows (50 M by
# default), committed a day at a time with their totals as ingest commits
# them, then rolled up to hours (what `cargo bench --bench rollup`, or
# benches/rollup_vs_duckdb.sh, leaves in target/bench-rollup/rollup).
# Prints, for a full audit and for --trust-summaries: the run time, the
# data files read, the peak RSS, and whether the table audited consistent.
#
#   cargo bench --bench rollup && benches/audit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FIRN_BENCH_DIR:-$PWD/target/bench-rollup}/rollup
if [ ! -f "$dir/catalog.db" ]; then
  echo "no bench table in $dir: run \`cargo bench --bench rollup\` first" >&2
  exit 1
fi
cargo build --release --bin firn
for mode in full --trust-summaries; do
  flags=()
  [ "$mode" = full ] || flags=("$mode")
  out=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$out.time" \
    target/release/firn --catalog-uri "sqlite://$dir/catalog.db?mode=rwc" \
    --warehouse "$dir/warehouse" --schemas schemas \
    audit usage.http_requests --json "${flags[@]}" >"$out" || true
  read -r seconds rss_kib <"$out.time"
  python3 - "$out" "$mode" "$seconds" "$rss_kib" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
print(json.dumps({
    "mode": sys.argv[2],
    "seconds": float(sys.argv[3]),
    "peak_rss_mib": round(int(sys.argv[4]) / 1024, 1),
    "snapshots": report["snapshots"],
    "files_read": report["files_read"],
    "days": len(report["days"]),
    "consistent": report["consistent"],
}))
EOF
  rm -f "$out" "$out.time"
done
