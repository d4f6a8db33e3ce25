"""Independent readers: PyIceberg and DuckDB read a firn table and print its
per-day and whole-table measure totals as JSON, for the Rust tests to compare
with firn's own.

usage: totals.py --catalog-uri URI --warehouse W --catalog-name N --table NS.NAME
       --measure name:agg ... [--metadata LOCATION]
"""
import argparse
import importlib
import json
import os

import duckdb

import catalogs

p = argparse.ArgumentParser()
catalogs.add_arguments(p)
p.add_argument("--table", required=True)
p.add_argument("--measure", action="append", required=True)
a = p.parse_args()

measures = [m.split(":") for m in a.measure]
sql_aggs = ", ".join(
    f"{'max' if agg == 'max' else 'min' if agg == 'min' else 'sum'}({name}) AS {name}"
    for name, agg in measures
)


def totals(con, relation):
    per_day = {}
    for row in con.execute(
        f"SELECT strftime(CAST(ts AT TIME ZONE 'UTC' AS DATE), '%Y-%m-%d') AS d, {sql_aggs} "
        f"FROM {relation} GROUP BY d ORDER BY d"
    ).fetchall():
        per_day[row[0]] = dict(zip([m[0] for m in measures], [int(v) if v is not None else None for v in row[1:]]))
    whole = con.execute(f"SELECT count(*), {sql_aggs} FROM {relation}").fetchone()
    return {
        "rows": whole[0],
        "all": dict(zip([m[0] for m in measures], [int(v) if v is not None else None for v in whole[1:]])),
        "per_day": per_day,
    }


key, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
catalog = catalogs.open_catalog(a)
table = catalog.load_table(a.table)
con = duckdb.connect(config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false"})
con.execute("SET TimeZone = 'UTC'")
arrow = table.scan().to_arrow()
con.register("pyiceberg_scan", arrow)
out = {"pyiceberg": totals(con, "pyiceberg_scan")}

for name in ["avro", "httpfs", "iceberg"]:
    mod = importlib.import_module(f"duckdb_extension_{name}")
    path = os.path.join(os.path.dirname(mod.__file__), f"extensions/v1.5.5/{name}.duckdb_extension")
    con.execute(f"INSTALL '{path}'")
    con.execute(f"LOAD {name}")
if a.s3_endpoint:
    con.execute(
        f"CREATE SECRET (TYPE s3, KEY_ID '{key}', SECRET '{secret}', ENDPOINT '{a.s3_endpoint}', "
        "URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
    )
location = table.metadata_location.replace("file://", "")
out["duckdb"] = totals(con, f"iceberg_scan('{location}')")
out["metadata_location"] = table.metadata_location
print(json.dumps(out))
