"""The catalog: table names, opening the SQL or Glue catalog, loading and creating tables.

Every pyiceberg commit of a table, whoever starts it (our commits, schema changes, snapshot expiry, property
changes), ends in its catalog's `commit_table`. The catalogs opened here check there, and before a table or
namespace is made, for a signal whose first raise Python dropped (pipeline/interrupts.py), so an interrupted
command changes no catalog, wherever the change comes from; the load history alone is exempt
(`interrupts.recording`).
"""
from __future__ import annotations

import functools
import os
import time

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from .. import interrupts
from ..errors import UsageError
from ..storage import glue_properties, iceberg_io_properties, is_remote

CATALOG_NAME = "impressions"
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "1",  # fast; the files are already small per partition
    "write.parquet.row-group-limit": "1048576",
    "commit.retry.num-retries": "0",  # we retry ourselves, re-planning against the new snapshot (commit.py)
}
# `write.compression` values (impressions.yaml) → Iceberg's codec names
COMPRESSION = {"zstd": "zstd", "snappy": "snappy", "gzip": "gzip", "lz4": "lz4", "brotli": "brotli",
               "none": "uncompressed"}


def table_name(name: str, namespace: str = "impressions") -> tuple[str, str]:
    """`FACT_PARTITIONED`, `ns.NAME` or `tables/FACT_PARTITIONED` → ("impressions", "fact_partitioned")."""
    name = name.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    if "." in name:
        namespace, name = name.rsplit(".", 1)
    if not name or not name.replace("_", "").isalnum() or not namespace.replace("_", "").isalnum():
        raise UsageError(f"invalid table name {name!r}: use letters, digits and underscores (NAME or ns.NAME)")
    return namespace.lower(), name


def qualified(ident: tuple[str, str]) -> str:
    return ".".join(ident)


def catalog_properties(warehouse: str) -> dict:
    props = {"warehouse": warehouse, **iceberg_io_properties()}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        props["glue.region"] = region
    return props


def open_catalog(warehouse: str, catalog: str | None, create: bool = True) -> Catalog:
    """SQL catalog (sqlite inside a local warehouse by default) or AWS Glue.

    `create=False` (read-only commands) never makes a warehouse directory or a catalog database: a missing one
    is a usage error naming it. A warehouse that cannot be written, or a catalog URI that cannot be opened, is a
    configuration error found here, before any cluster starts.
    """
    props = catalog_properties(warehouse)
    if catalog is None and is_remote(warehouse):
        raise UsageError("an s3:// warehouse needs --catalog (a SQLAlchemy URI or 'glue')")
    if not is_remote(warehouse):
        _local_warehouse(warehouse, create)
        props["warehouse"] = "file://" + os.path.abspath(warehouse)
        if catalog is None:
            catalog = f"sqlite:///{os.path.abspath(warehouse)}/catalog.db"
    if catalog == "glue":
        from pyiceberg.catalog.glue import GlueCatalog

        endpoint = os.environ.get("AWS_ENDPOINT_URL_GLUE") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            props["glue.endpoint"] = endpoint
        return _checked(GlueCatalog)(CATALOG_NAME, **props, **glue_properties())
    if "://" not in catalog:
        raise UsageError(f"--catalog must be a SQLAlchemy URI (sqlite:///..., postgresql://...) or 'glue', got {catalog!r}")
    if catalog.startswith("sqlite:///") and not create and not os.path.exists(catalog[len("sqlite:///"):]):
        raise UsageError(f"no catalog at {catalog[len('sqlite:///'):]} (warehouse {warehouse})")
    from pyiceberg.catalog.sql import SqlCatalog

    for attempt in range(5):
        try:
            return _checked(SqlCatalog)(CATALOG_NAME, uri=catalog, **props)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors vary by driver; each is a bad --catalog
            error = e  # a concurrent first use may lock sqlite or race its CREATE TABLE: try again briefly
            time.sleep(0.2 * (attempt + 1))
    raise UsageError(f"cannot open the catalog {catalog}: {type(error).__name__}: {str(error).splitlines()[0]}")


# What changes a catalog: every commit ends in `commit_table`; pyiceberg makes a table without it
CHANGES = ("commit_table", "create_table", "create_namespace", "register_table", "drop_table", "rename_table")


def _checked(catalog_class: type) -> type:
    """`catalog_class` whose every change (CHANGES) first checks that the command was not interrupted (made when
    first needed: the Glue and SQL modules import boto3 and SQLAlchemy, which a command that uses neither should
    not pay for)."""
    if catalog_class not in _CLASSES:
        _CLASSES[catalog_class] = type(catalog_class.__name__, (catalog_class,),
                                       {name: _after_check(getattr(catalog_class, name)) for name in CHANGES})
    return _CLASSES[catalog_class]


def _after_check(method):
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        interrupts.check_commit()
        return method(self, *args, **kwargs)
    return checked


_CLASSES: dict[type, type] = {}


def _local_warehouse(warehouse: str, create: bool) -> None:
    path = os.path.abspath(warehouse)
    if not os.path.isdir(path):
        if not create:
            raise UsageError(f"no warehouse at {path}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the warehouse {path}: {e.strerror}") from None
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"the warehouse {path} is not writable")


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    except Exception:  # noqa: BLE001 - a concurrent create surfaces as the driver's own error (sqlite: UNIQUE)
        if (namespace,) not in catalog.list_namespaces():
            raise


def load_table(catalog: Catalog, ident: tuple[str, str]) -> Table:
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        where = catalog.properties.get("warehouse", "")
        raise UsageError(f"table {qualified(ident)} does not exist (warehouse {where.removeprefix('file://')})") from None


def table_properties(settings) -> dict:
    """Properties of a new table: ours, plus the Parquet options from `impressions.write.*`."""
    props = {**TABLE_PROPERTIES, "write.parquet.compression-codec": COMPRESSION[settings.compression],
             "write.parquet.row-group-limit": str(settings.row_group_rows)}
    if settings.compression not in ("zstd", "gzip", "brotli"):
        props.pop("write.parquet.compression-level")
    return props


def create_or_load(catalog: Catalog, ident: tuple[str, str], schema: Schema, spec: PartitionSpec,
                   properties: dict | None = None) -> Table:
    """Load the table, or create it (a table keeps the properties it was created with)."""
    ensure_namespace(catalog, ident[0])
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        pass
    try:
        return catalog.create_table(ident, schema=schema, partition_spec=spec,
                                    properties=properties or TABLE_PROPERTIES)
    except TableAlreadyExistsError:  # created concurrently
        return catalog.load_table(ident)
