#!/usr/bin/env bash
# Rollup and compaction against DuckDB on the same minute files: runs the
# rollup bench (which keeps its generated files and firn's output), then
# DuckDB doing the same aggregation (GROUP BY the dimensions and the
# truncated ts, ORDER BY them, to zstd Parquet) on one thread and on two;
# prints both times (each the fastest of FIRN_BENCH_REPEAT runs, default 3),
# their ratio, firn's peak RSS, and whether the two
# outputs hold the same rows (exits non-zero when they do not). DuckDB
# comes from PyPI into the project's venv.
#
#   benches/rollup_vs_duckdb.sh                         # 50 M rows
#   FIRN_BENCH_ROWS=5000000 benches/rollup_vs_duckdb.sh # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
export FIRN_BENCH_DIR=${FIRN_BENCH_DIR:-$PWD/target/bench-rollup}
venv=${FIRN_VENV:-$PWD/target/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb==1.5.5
cargo bench --bench rollup
"$venv/bin/python" benches/duckdb_rollup.py "$FIRN_BENCH_DIR"
