"""DuckDB doing firn's minute -> hour rollup on the same files; prints the ratio.

Reads the minute files the rollup bench generated (minute-files.txt) and
firn's timing (firn-rollup.json) from the bench directory.
"""
import json
import os
import sys
import time

import duckdb

bench_dir = sys.argv[1]
files = open(os.path.join(bench_dir, "minute-files.txt")).read().split()
firn = json.load(open(os.path.join(bench_dir, "firn-rollup.json")))
out = os.path.join(bench_dir, "duckdb-hour.parquet")
file_list = ", ".join(f"'{f}'" for f in files)

con = duckdb.connect()
con.execute("SET threads TO 1")  # firn's rollup runs on one core
start = time.perf_counter()
con.execute(f"""
COPY (
  SELECT account_id, zone_id, colo, product,
         date_trunc('hour', ts) AS ts, 'hour' AS grain,
         sum(requests) AS requests, sum(bytes) AS bytes, sum(cpu_ms) AS cpu_ms,
         max(ttfb_ms_max) AS ttfb_ms_max
  FROM read_parquet([{file_list}])
  GROUP BY account_id, zone_id, colo, product, date_trunc('hour', ts)
  ORDER BY account_id, zone_id, colo, product, ts
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
""")
duck = time.perf_counter() - start
rows_out = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
print(json.dumps({
    "rows_in": firn["rows_in"],
    "firn_seconds": round(firn["seconds"], 2),
    "duckdb_seconds_1_thread": round(duck, 2),
    "firn_rows_out": firn["rows_out"],
    "duckdb_rows_out": rows_out,
    "firn_over_duckdb_time_ratio": round(firn["seconds"] / duck, 2),
}))
