"""A data file's Iceberg metrics (counts, bounds, split offsets) as the writer records them are pyiceberg's own:
for every column type the tables hold, under every metrics mode, with nulls, NaNs, long and non-ASCII text
(truncated bounds), several row groups, dictionary-encoded or plain."""
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io.pyarrow import compute_statistics_plan, data_file_statistics_from_parquet_metadata, \
    parquet_path_to_id_mapping
from pyiceberg.schema import Schema
from pyiceberg.types import BinaryType, BooleanType, DateType, DoubleType, IntegerType, LongType, NestedField, \
    StringType

from pipeline.table.write import NO_SOURCE, WriteTarget, write_data_files

SCHEMA = Schema(
    NestedField(1, "day", DateType()), NestedField(2, "id", LongType()), NestedField(3, "name", StringType()),
    NestedField(4, "line", BinaryType()), NestedField(5, "share", DoubleType()), NestedField(6, "n", IntegerType()),
    NestedField(7, "flag", BooleanType()))

MODES = [{}, {"write.metadata.metrics.default": "full"}, {"write.metadata.metrics.default": "counts"},
         {"write.metadata.metrics.default": "truncate(3)", "write.metadata.metrics.column.id": "none",
          "write.metadata.metrics.column.line": "full"}]

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
rows_of = st.lists(st.tuples(
    st.none() | st.dates(date(1970, 1, 1), date(2100, 1, 1)), st.none() | st.integers(-2 ** 63, 2 ** 63 - 1),
    st.none() | text | st.sampled_from(["campaign_0000000000000001", "\U0010ffff" * 20, "z" * 17]),
    st.none() | st.binary(max_size=20) | st.just(b"\xff" * 18),
    st.none() | st.floats(allow_nan=True, allow_infinity=True), st.none() | st.integers(-2 ** 31, 2 ** 31 - 1),
    st.none() | st.booleans()), min_size=0, max_size=40)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    where = tmp_path_factory.mktemp("stats")
    return SqlCatalog("t", uri=f"sqlite:///{where}/c.db", warehouse=f"file://{where}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_of, mode=st.sampled_from(range(len(MODES))), encode=st.booleans(), group=st.sampled_from([3, 1000]))
def test_the_recorded_metrics_are_pyicebergs(catalog, rows, mode, encode, group):
    name = f"default.t{mode}_{group}"
    properties = {**MODES[mode], "write.parquet.row-group-limit": str(group)}
    if not catalog.table_exists(name):
        catalog.create_namespace_if_not_exists("default")
        catalog.create_table(name, SCHEMA, properties=properties)
    table = catalog.load_table(name)
    columns = list(zip(*rows)) if rows else [[] for _ in SCHEMA.fields]
    arrow = pa.table({f.name: pa.array(list(c), t) for f, c, t in zip(
        SCHEMA.fields, columns,
        [pa.date32(), pa.int64(), pa.string(), pa.binary(), pa.float64(), pa.int32(), pa.bool_()])})
    if encode:  # text as a share holds it: dictionary-encoded
        arrow = arrow.set_column(2, "name", arrow["name"].dictionary_encode())
    [written] = write_data_files(WriteTarget.of(table), [((), NO_SOURCE, arrow)])
    got = written.data_file
    metadata = pq.ParquetFile(got.file_path.removeprefix("file://")).metadata
    want = data_file_statistics_from_parquet_metadata(
        parquet_metadata=metadata, stats_columns=compute_statistics_plan(table.schema(), table.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(table.schema())).to_serialized_dict()
    assert metadata.num_row_groups == max(1, -(-len(rows) // group))
    for key, value in want.items():
        assert getattr(got, key) == value, key
