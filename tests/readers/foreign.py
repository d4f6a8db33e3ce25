"""Another engine writing to a firn table, as analysts' PyIceberg scripts and
managed maintenance do in a shared lake. Each command commits one snapshot
with no firn properties and prints, as JSON, how it changed the table's sums
(`{"requests": n, "bytes": n, "cpu_ms": n}`; negative for removed rows).

usage: foreign.py --catalog-uri URI --warehouse W [--catalog-type rest --s3-endpoint H:P]
                  --table NS.NAME COMMAND [ARG]
  append TS_ISO          one minute row at TS_ISO (requests 1, bytes 1000, cpu_ms 5)
  rewrite-all            read every row and overwrite the table with them (a
                         compaction: every file replaced, same totals)
  delete-hour TS_ISO     delete the rows of the hour starting at TS_ISO
  expire-all-but-current expire every snapshot but the current one
  tag NAME               tag the current snapshot
  sums                   (no commit) the table's sums and rows as PyIceberg reads them
"""
import argparse
import json
import os
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

SUMS = ["requests", "bytes", "cpu_ms"]

p = argparse.ArgumentParser()
p.add_argument("--catalog-uri", required=True)
p.add_argument("--warehouse", required=True)
p.add_argument("--catalog-name", default="firn")
p.add_argument("--table", required=True)
p.add_argument("--catalog-type", default="sql", choices=["sql", "rest"])
p.add_argument("--s3-endpoint", help="host:port of an S3 API (REST catalogs' warehouses)")
p.add_argument("command")
p.add_argument("arg", nargs="?")
a = p.parse_args()

if a.catalog_type == "rest":
    from pyiceberg.catalog.rest import RestCatalog

    catalog = RestCatalog(
        a.catalog_name,
        **{
            "uri": a.catalog_uri,
            "warehouse": a.warehouse,
            "credential": os.environ["FIRN_CATALOG_CREDENTIAL"],
            "s3.endpoint": f"http://{a.s3_endpoint}",
            "s3.access-key-id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
            "s3.secret-access-key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "s3.region": "us-east-1",
        },
    )
else:
    catalog = SqlCatalog(a.catalog_name, uri=a.catalog_uri, warehouse=a.warehouse)
table = catalog.load_table(a.table)


def sums(arrow, sign=1):
    return {m: sign * int(pc.sum(arrow[m]).as_py() or 0) for m in SUMS}


def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


if a.command == "append":
    schema = table.schema().as_arrow()
    values = {
        "ts": [ts(a.arg)], "grain": ["minute"], "account_id": [999_999], "zone_id": [1],
        "colo": ["foreign"], "product": ["foreign"], "requests": [1], "bytes": [1000],
        "cpu_ms": [5], "ttfb_ms_max": [7],
    }
    columns = [pa.array(values.get(f.name, [None]), type=f.type) for f in schema]
    row = pa.Table.from_arrays(columns, schema=schema)
    table.append(row)
    print(json.dumps(sums(row)))
elif a.command == "rewrite-all":
    everything = table.scan().to_arrow()
    table.overwrite(everything)
    print(json.dumps({m: 0 for m in SUMS}))
elif a.command == "delete-hour":
    start = ts(a.arg)
    where = And(GreaterThanOrEqual("ts", start.isoformat()),
                LessThan("ts", (start + timedelta(hours=1)).isoformat()))
    gone = table.scan(row_filter=where).to_arrow()
    table.delete(delete_filter=where)
    print(json.dumps(sums(gone, -1)))
elif a.command == "expire-all-but-current":
    current = table.metadata.current_snapshot_id
    others = [s.snapshot_id for s in table.metadata.snapshots if s.snapshot_id != current]
    table.maintenance.expire_snapshots().by_ids(others).commit()
    print(json.dumps({m: 0 for m in SUMS}))
elif a.command == "tag":
    table.manage_snapshots().create_tag(table.metadata.current_snapshot_id, a.arg).commit()
    print(json.dumps({m: 0 for m in SUMS}))
elif a.command == "sums":
    everything = table.scan().to_arrow()
    print(json.dumps(dict(sums(everything), rows=everything.num_rows)))
else:
    raise SystemExit(f"unknown command {a.command}")
