"""DuckDB doing what firn's rollup and compaction bench did, on the same files.

Reads the minute files the bench generated (`<dir>/{rollup,compact}/
minute-files.txt`) and firn's runs (`<dir>/firn.jsonl`); runs the same
aggregation in DuckDB (GROUP BY the dimensions and the truncated ts, ORDER
BY them, to zstd Parquet) on one thread and on two; checks that firn's
output files hold exactly DuckDB's rows (every row, every value: EXCEPT ALL
both ways) and prints one JSON object with both times, the ratios, firn's
peak RSS and whether the outputs agree.
"""
import json
import os
import sys
import time

import duckdb

bench_dir = sys.argv[1]
firn = {}
for line in open(os.path.join(bench_dir, "firn.jsonl")):
    if line.strip():
        r = json.loads(line)
        firn[(r["what"], r["jobs"])] = r

DIMS = "account_id, zone_id, colo, product"
# Sums as BIGINT, as firn stores them (DuckDB's sum of BIGINT is a HUGEINT).
MEASURES = ("sum(requests)::BIGINT AS requests, sum(bytes)::BIGINT AS bytes, "
            "sum(cpu_ms)::BIGINT AS cpu_ms, max(ttfb_ms_max) AS ttfb_ms_max")
COLUMNS = f"{DIMS}, ts, grain, requests, bytes, cpu_ms, ttfb_ms_max"


def files(what, name):
    text = open(os.path.join(bench_dir, what, name)).read().split()
    return "[" + ", ".join(f"'{f}'" for f in text) + "]"


REPEAT = int(os.environ.get("FIRN_BENCH_REPEAT", "3"))


def duck(what, unit, grain, threads):
    """The fastest of REPEAT runs, as firn's side keeps its fastest."""
    best = None
    for _ in range(max(REPEAT, 1)):
        out, seconds = duck_once(what, unit, grain, threads)
        best = seconds if best is None else min(best, seconds)
    return out, best


def duck_once(what, unit, grain, threads):
    out = os.path.join(bench_dir, what, f"duckdb-{threads}.parquet")
    con = duckdb.connect()
    con.execute(f"SET threads TO {threads}")
    con.execute("SET TimeZone = 'UTC'")
    start = time.perf_counter()
    con.execute(f"""
    COPY (
      SELECT {DIMS}, date_trunc('{unit}', ts) AS ts, '{grain}' AS grain, {MEASURES}
      FROM read_parquet({files(what, 'minute-files.txt')})
      GROUP BY {DIMS}, date_trunc('{unit}', ts)
      ORDER BY {DIMS}, ts
    ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
    """)
    seconds = time.perf_counter() - start
    return out, seconds


def agree(what, jobs, duck_out):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ours = f"read_parquet({files(what, f'firn-{what}-{jobs}-files.txt')})"
    theirs = f"read_parquet('{duck_out}')"
    n_ours = con.execute(f"SELECT count(*) FROM {ours}").fetchone()[0]
    n_theirs = con.execute(f"SELECT count(*) FROM {theirs}").fetchone()[0]
    only_ours = con.execute(
        f"SELECT count(*) FROM (SELECT {COLUMNS} FROM {ours} EXCEPT ALL "
        f"SELECT {COLUMNS} FROM {theirs})").fetchone()[0]
    only_theirs = con.execute(
        f"SELECT count(*) FROM (SELECT {COLUMNS} FROM {theirs} EXCEPT ALL "
        f"SELECT {COLUMNS} FROM {ours})").fetchone()[0]
    return {"rows_firn": n_ours, "rows_duckdb": n_theirs,
            "rows_only_in_firn": only_ours, "rows_only_in_duckdb": only_theirs,
            "agree": n_ours == n_theirs and only_ours == 0 and only_theirs == 0}


report = {}
for what, unit, grain in [("rollup", "hour", "hour"), ("compact", "minute", "minute")]:
    entry = {}
    for threads in (1, 2):
        f = firn[(what, threads)]
        out, seconds = duck(what, unit, grain, threads)
        entry[f"{threads}_thread"] = {
            "rows_in": f["rows_in"],
            "files_in": f["files_in"],
            "firn_seconds": round(f["seconds"], 2),
            "duckdb_seconds": round(seconds, 2),
            "firn_over_duckdb_time_ratio": round(f["seconds"] / seconds, 2),
            "firn_rows_per_second": round(f["rows_in"] / f["seconds"]),
            "duckdb_rows_per_second": round(f["rows_in"] / seconds),
            "firn_files_per_second": round(f["files_in"] / f["seconds"], 1),
            "duckdb_files_per_second": round(f["files_in"] / seconds, 1),
            "firn_peak_rss_mib": round(f["peak_rss_mib"], 1),
            "outputs": agree(what, threads, out),
        }
    report[what] = entry
print(json.dumps(report, indent=2))
if not all(e[t]["outputs"]["agree"] for e in report.values() for t in e):
    sys.exit("firn's output and DuckDB's differ")
