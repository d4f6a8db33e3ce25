#!/usr/bin/env bash
# Rollup throughput against DuckDB on the same minute files: runs the rollup
# bench (which keeps its generated files), then DuckDB doing the same
# aggregation (GROUP BY the dimensions and the hour, written to zstd Parquet),
# and prints both times and their ratio. DuckDB comes from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export FIRN_BENCH_DIR=${FIRN_BENCH_DIR:-$PWD/target/bench-rollup}
venv=${FIRN_VENV:-$PWD/target/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb==1.5.5
cargo bench --bench rollup
"$venv/bin/python" benches/duckdb_rollup.py "$FIRN_BENCH_DIR"
