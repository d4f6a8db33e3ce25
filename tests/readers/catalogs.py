"""How the test scripts reach a firn table's catalog: the SQL catalog
(SQLite or PostgreSQL) or a REST catalog with an S3 warehouse, from the same
command-line arguments in every script."""
import os

from pyiceberg.catalog.sql import SqlCatalog


def add_arguments(p):
    p.add_argument("--catalog-uri", required=True)
    p.add_argument("--warehouse", required=True)
    p.add_argument("--catalog-name", default="firn")
    p.add_argument("--catalog-type", default="sql", choices=["sql", "rest"])
    p.add_argument("--s3-endpoint", help="host:port of an S3 API (REST catalogs' warehouses)")


def open_catalog(a):
    if a.catalog_type == "rest":
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog(
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
    return SqlCatalog(a.catalog_name, uri=a.catalog_uri, warehouse=a.warehouse)
