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
  double-hour TS_ISO     overwrite the rows of the hour starting at TS_ISO with
                         the same rows, their requests doubled
  expire-all-but-current expire every snapshot but the current one
  tag NAME               tag the current snapshot
  sums                   (no commit) the table's sums and rows as PyIceberg reads them
  day-sums [REF]         (no commit) per-day sums as PyIceberg reads main or the
                         branch or tag REF: {"YYYY-MM-DD": {"requests": n, ...}}
"""
import argparse
import json
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

import catalogs

SUMS = ["requests", "bytes", "cpu_ms"]

p = argparse.ArgumentParser()
catalogs.add_arguments(p)
p.add_argument("--table", required=True)
p.add_argument("command")
p.add_argument("arg", nargs="?")
a = p.parse_args()

catalog = catalogs.open_catalog(a)
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
elif a.command == "double-hour":
    start = ts(a.arg)
    where = And(GreaterThanOrEqual("ts", start.isoformat()),
                LessThan("ts", (start + timedelta(hours=1)).isoformat()))
    rows = table.scan(row_filter=where).to_arrow()
    doubled = rows.set_column(rows.schema.get_field_index("requests"), "requests",
                              pc.multiply(rows["requests"], 2))
    table.overwrite(doubled.cast(rows.schema), overwrite_filter=where)
    print(json.dumps({"requests": int(pc.sum(rows["requests"]).as_py() or 0),
                      "bytes": 0, "cpu_ms": 0}))
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
elif a.command == "day-sums":
    snapshot = table.metadata.snapshot_by_name(a.arg) if a.arg else table.current_snapshot()
    if snapshot is None:
        raise SystemExit(f"no snapshot named {a.arg}")
    rows = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow()
    days = pc.strftime(pc.cast(rows["ts"], pa.timestamp("us", tz="UTC")), format="%Y-%m-%d")
    grouped = pa.table({"d": days, **{m: rows[m] for m in SUMS}}).group_by("d").aggregate(
        [(m, "sum") for m in SUMS])
    out = {}
    for row in grouped.to_pylist():
        out[row["d"]] = {m: int(row[f"{m}_sum"] or 0) for m in SUMS}
    print(json.dumps(out))
else:
    raise SystemExit(f"unknown command {a.command}")
