"""Parallel writes of Iceberg data files from Dask workers: the one adapter around pyiceberg's private write API
(pin pyiceberg==0.12.*; if it breaks, only this package changes).

Workers write data files with `write_data_files`; the driver commits them in one snapshot (commit.py).
"""
from __future__ import annotations

import copy
import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.conversions import to_bytes
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import (MetricModeTypes, StatsAggregator, _get_parquet_writer_kwargs,
                                  compute_statistics_plan, data_file_statistics_from_parquet_metadata,
                                  parquet_path_to_id_mapping, schema_to_pyarrow)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.table import Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import TruncateTransform
from pyiceberg.typedef import Record
from pyiceberg.types import BinaryType, DecimalType, StringType
from pyiceberg.utils.truncate import truncate_upper_bound_binary_string, truncate_upper_bound_text_string

from ..report import stats
from ..storage import is_remote, upload, write_local
from .lineage import FOOTER_MOMENTS, FOOTER_SOURCE, file_name


@dataclass
class WrittenFile:
    """A written data file, the source its rows came from, and their viewing_percentage moments."""

    data_file: DataFile
    source: str  # the source fingerprint (also in the file's name)
    moments: stats.Moments


@dataclass(frozen=True)
class WriteTarget:
    """What a worker needs to write data files of a table: plain, picklable data."""

    metadata: TableMetadata
    io_properties: dict

    @classmethod
    def of(cls, table: Table) -> "WriteTarget":
        return cls(table.metadata, dict(table.io.properties))

    def io(self):
        return load_file_io(self.io_properties, self.metadata.location)


# the "source" in the name of a file whose rows come from no known source: the load history, the stored
# dimension, and rows another engine wrote (their source cannot be told)
NO_SOURCE = "0" * 24


def write_unpartitioned(table: Table, rows: pa.Table) -> list[DataFile]:
    """The data files of rows for an unpartitioned table (the load history, the stored dimension), written as
    every data file is: on S3 with their row count as object metadata."""
    return [w.data_file for w in write_data_files(WriteTarget.of(table), [((), NO_SOURCE, rows)])]


def partition_key(target: WriteTarget, values: tuple) -> PartitionKey | None:
    """Partition key from already-transformed values (e.g. (date, bucket)), in spec order."""
    spec = target.metadata.spec()
    if spec.is_unpartitioned():
        return None
    return PartitionKey(
        field_values=[PartitionFieldValue(field=f, value=v) for f, v in zip(spec.fields, values)],
        partition_spec=spec,
        schema=target.metadata.schema(),
    )


def write_data_files(target: WriteTarget, groups: list[tuple[tuple, str, pa.Table]],
                     threads: int = 1, file_size: int | None = None) -> list[WrittenFile]:
    """Write one Parquet data file per (partition values, source fingerprint, rows) group, `threads` at a time
    (a worker's task threads: more only fight over the same cores, measured 1.6-1.9x slower with 8 on 2 cores).
    `rows` is a table, or a function giving the rows as an iterator of tables (read from a spill as they are
    written: a group is never whole in memory, only about one row group of it). A group larger than `file_size`
    (default: the table's write.target-file-size-bytes, 512 MiB) goes into several files of about that size.

    What pyiceberg's own writer does (field ids, Iceberg column statistics, the table's location provider and
    Parquet properties), minus its per-row re-derivation of the partition, and with dictionary encoding only
    where a file's values repeat (dates always, strings: `_repeats_text`, viewing_percentage: `_repeats`):
    dictionaries of unique values cost time and save nothing. The file's name carries the source
    fingerprint and its footer the rows' moments (lineage.py), so both survive any maintenance that keeps the file.
    """
    from concurrent.futures import ThreadPoolExecutor

    metadata = target.metadata
    schema = metadata.schema()
    arrow_schema = _plain_types(schema_to_pyarrow(schema, include_field_ids=True))
    options = parquet_options(metadata.properties)
    # ids and offsets: delta-encoded, which is both smaller and cheaper to compress than plain (ids grow)
    options["column_encoding"] = {f.name: "DELTA_BINARY_PACKED" for f in arrow_schema if pa.types.is_int64(f.type)}
    dates = [f.name for f in arrow_schema if pa.types.is_date(f.type)]  # a partition's few days: always repeat
    texts = [f.name for f in arrow_schema if pa.types.is_string(f.type)]

    def options_for(table: pa.Table) -> dict:
        """The Parquet options of a file whose first row group is `table`: a dictionary for its dates and for
        the columns whose values repeat in it (`_repeats_text`, `_repeats`)."""
        dictionary = dates + [name for name in texts if name in table.column_names and _repeats_text(table[name])]
        if _repeats(table, "viewing_percentage"):
            dictionary.append("viewing_percentage")
        return {**options, "use_dictionary": dictionary}

    row_group = int(metadata.properties.get("write.parquet.row-group-limit", 1048576))
    target_size = file_size or int(metadata.properties.get("write.target-file-size-bytes", 512 * 1024 * 1024))
    numbers = itertools.count()  # of the files this call writes (threads take them in turn)
    locations = load_location_provider(table_location=metadata.location, table_properties=metadata.properties)
    conform = _Conform(arrow_schema)
    paths = _PartitionPaths(metadata)
    statistics_of = _FileStatistics(schema, metadata.properties)
    write_id = uuid.uuid4().hex[:16]

    def write_one(item) -> list[WrittenFile]:
        values, source, rows = item
        key = partition_key(target, values)
        out, file = [], None
        for table in _row_groups(rows, row_group):
            # one chunk per column: the writer encodes a chunked dictionary column chunk by chunk (~1.7x the time)
            table = only_used_values(conform(table).unify_dictionaries().combine_chunks())
            if file is None:
                path = locations.new_data_location(data_file_name=file_name(source, write_id, next(numbers)),
                                                   partition_key=paths.of(key))
                file = _File(path, table.schema, options_for(table))
            file.write(table, row_group)
            if file.size() >= target_size:  # the table's write.target-file-size-bytes: the next rows, a new file
                out.append(finish(file, key, source))
                file = None
        if file is not None:
            out.append(finish(file, key, source))
        return out

    def finish(file: "_File", key, source: str) -> WrittenFile:
        data = file.close(source)
        # the file is built in memory and stored in one call: on S3 with the row count and moments as the
        # object's metadata (x-amz-meta-*), set as it is created, so an audit reads them with a HEAD; on a local
        # disk with one write (an output stream per file cost a directory walk, a stat and a write per page)
        if is_remote(file.path):
            upload(file.path, data.to_pybytes(), object_metadata_of(file.rows, file.moments))
        else:
            write_local(file.path, data)
        data_file = DataFile.from_args(
            content=DataFileContent.DATA, file_path=file.path, file_format=FileFormat.PARQUET,
            partition=key.partition if key else Record(), file_size_in_bytes=data.size, sort_order_id=None,
            spec_id=metadata.default_spec_id, equality_ids=None, key_metadata=None,
            **statistics_of(file.writer.writer.metadata),
        )
        return WrittenFile(data_file, source, file.moments)

    if threads <= 1 or len(groups) == 1:
        return [w for item in groups for w in write_one(item)]
    with ThreadPoolExecutor(min(threads, len(groups))) as pool:
        return [w for ws in pool.map(write_one, groups) for w in ws]


class _FileStatistics:
    """A data file's Iceberg metrics from its Parquet footer: what pyiceberg's
    `data_file_statistics_from_parquet_metadata(...).to_serialized_dict()` gives (counts, bounds under the table's
    metrics modes, split offsets), with what pyiceberg derives again for every file (the metrics modes, a
    statistics aggregator, truncation and serializer objects per column) worked out once per write (README,
    Performance, "Per-file cuts").
    A schema with decimals (their raw statistics need unscaling) takes pyiceberg's own function."""

    NONE, COUNTS, BOUNDS = range(3)

    def __init__(self, schema, properties: dict):
        self.plan = compute_statistics_plan(schema, properties)
        self.mapping = parquet_path_to_id_mapping(schema)
        self.exact = any(isinstance(c.iceberg_type, DecimalType) for c in self.plan.values())
        kind = {MetricModeTypes.NONE: self.NONE, MetricModeTypes.COUNTS: self.COUNTS}
        self.kinds = {f: kind.get(c.mode.type, self.BOUNDS) for f, c in self.plan.items()}
        self.checked: set = set()  # (field id, Parquet physical type) pairs pyiceberg's aggregator accepted
        self.lower, self.upper = {}, {}
        for f, c in self.plan.items():
            if self.kinds[f] == self.BOUNDS:
                self.lower[f], self.upper[f] = _bound_serializers(c.iceberg_type, c.mode.length)

    def __call__(self, md) -> dict:
        if self.exact:
            return data_file_statistics_from_parquet_metadata(
                parquet_metadata=md, stats_columns=self.plan, parquet_column_mapping=self.mapping).to_serialized_dict()
        sizes, counts, nulls, lows, highs, offsets, invalid = {}, {}, {}, {}, {}, [], set()
        for r in range(md.num_row_groups):
            group = md.row_group(r)
            first = group.column(0)
            offsets.append(first.dictionary_page_offset if first.has_dictionary_page
                           and first.dictionary_page_offset < first.data_page_offset else first.data_page_offset)
            for pos in range(md.num_columns):
                column = group.column(pos)
                f = self.mapping[column.path_in_schema]
                sizes[f] = sizes.get(f, 0) + column.total_compressed_size
                kind = self.kinds[f]
                if kind == self.NONE:
                    continue
                counts[f] = counts.get(f, 0) + column.num_values
                if not column.is_stats_set:
                    invalid.add(f)
                    continue
                try:
                    st = column.statistics
                    if st.has_null_count:
                        nulls[f] = nulls.get(f, 0) + st.null_count
                    if kind == self.COUNTS:
                        continue
                    if (f, st.physical_type) not in self.checked:  # raises as pyiceberg does on a wrong type
                        c = self.plan[f]
                        StatsAggregator(c.iceberg_type, st.physical_type, c.mode.length)
                        self.checked.add((f, st.physical_type))
                    low, high = st.min, st.max
                except pa.ArrowNotImplementedError:
                    invalid.add(f)
                    continue
                if low is not None:
                    lows[f] = low if f not in lows else min(low, lows[f])
                if high is not None:
                    highs[f] = high if f not in highs else max(high, highs[f])
        for f in invalid:
            lows.pop(f, None), highs.pop(f, None), nulls.pop(f, None)
        lower = {f: b for f, v in lows.items() if (b := self.lower[f](v)) is not None}
        upper = {f: b for f, v in highs.items() if (b := self.upper[f](v)) is not None}
        return {"record_count": md.num_rows, "column_sizes": sizes, "value_counts": counts,
                "null_value_counts": nulls, "nan_value_counts": {}, "lower_bounds": lower, "upper_bounds": upper,
                "split_offsets": sorted(offsets)}


def _bound_serializers(iceberg_type, length: int | None):
    """(lower, upper): a column's min and max as Iceberg's bound bytes, as pyiceberg's StatsAggregator makes
    them (text and binary truncated to `length`; an upper bound that cannot be truncated is None)."""
    serialize = to_bytes.dispatch(type(iceberg_type))
    truncate = TruncateTransform(width=length).transform(iceberg_type) if length is not None else None

    def lower(value):
        return serialize(iceberg_type, truncate(value) if truncate else value)

    if isinstance(iceberg_type, (StringType, BinaryType)):
        cut = truncate_upper_bound_text_string if isinstance(iceberg_type, StringType) \
            else truncate_upper_bound_binary_string

        def upper(value):
            bound = cut(value, length)
            return serialize(iceberg_type, bound) if bound is not None else None
    else:
        def upper(value):
            return serialize(iceberg_type, value)
    return lower, upper


class _PartitionPaths:
    """A partition's directory (`ad_date=2019-01-01/campaign_id_bucket=7`) as pyiceberg's `PartitionKey.to_path`
    gives it, with the partition type derived once per write rather than once per file."""

    def __init__(self, metadata: TableMetadata):
        spec = metadata.spec()
        self.fields = spec.fields
        self.types = [f.field_type for f in spec.partition_type(metadata.schema()).fields]

    def of(self, key: PartitionKey | None) -> "_Path | None":
        if key is None:
            return None
        parts = []
        for pos, (field, field_type) in enumerate(zip(self.fields, self.types)):
            value = field.transform.to_human_string(field_type, value=key.partition[pos])
            parts.append(f"{quote_plus(field.name, safe='')}={quote_plus(value, safe='')}")
        return _Path("/".join(parts))


@dataclass(frozen=True)
class _Path:
    """What a location provider asks of a partition key: its path."""

    path: str

    def to_path(self) -> str:
        return self.path


class _File:
    """One Parquet data file being built in memory, with its rows' count and viewing_percentage moments."""

    def __init__(self, path: str, schema: pa.Schema, options: dict):
        import pyarrow.parquet as pq

        self.path, self.rows, self.moments = path, 0, stats.Moments.empty()
        self.buffer = pa.BufferOutputStream()
        # store_schema=False: no Arrow schema in the file, so dictionary-encoded string columns (written as they
        # are, without decoding and re-encoding) read back as plain strings in every engine
        self.writer = pq.ParquetWriter(self.buffer, schema=schema, store_schema=False, **options)

    def write(self, table: pa.Table, row_group: int) -> None:
        if "viewing_percentage" in table.column_names:
            self.moments = stats.combine(self.moments, stats.chunk(table["viewing_percentage"]))
        self.writer.write_table(table, row_group_size=row_group)
        self.rows += table.num_rows

    def size(self) -> int:
        return self.buffer.tell()

    def close(self, source: str) -> pa.Buffer:
        self.writer.add_key_value_metadata({FOOTER_MOMENTS: json.dumps(self.moments.to_dict()),
                                            FOOTER_SOURCE: source})
        self.writer.close()
        return self.buffer.getvalue()


DICTIONARY_ROWS = 1 << 16  # below this, a dictionary of doubles costs more than it saves, even for 4-digit values
GRID = 10_000  # values that are multiples of 1/GRID: at most GRID + 1 distinct ones in [0, 1]


def _repeats(table: pa.Table, name: str) -> bool:
    """Whether a file whose first row group is `table` should dictionary-encode the double column `name`: only
    when the group is large and its values lie on a coarse grid (percentages with up to 4 decimals, as `0.33`),
    judged from its first 1,024 values. Measured per 1M-row group, values with 4 decimals: 33 ms and 7.0 B a row
    with a dictionary, 49 ms and 8.2 B without; full-precision doubles: 42 ms and 13.0 B with, 32 ms and 12.7 B
    without (the writer builds a dictionary until it overflows, then writes them plain anyway); a 4,200-row
    file is smaller and faster without, whatever its values."""
    if name not in table.column_names or table.num_rows < DICTIONARY_ROWS:
        return False
    values = table[name].slice(0, 1024).to_numpy() * GRID
    return bool(np.all(np.abs(values - np.round(values)) < 1e-6))


TEXT_SAMPLE = 256  # values a plain text column's repeats are judged on: ~0.02 ms (4,096 cost ~0.26 ms a file)


def _repeats_text(col: pa.ChunkedArray) -> bool:
    """Whether a string column should be dictionary-encoded in a file: when its values repeat, on average
    twice or more. A dictionary column holding only the values its rows use (`only_used_values`, no nulls) says
    it exactly, and the writer stores its codes as they are; a plain one is judged from its first values. A
    held-out-style backfill's ~4,600-row files hold 91 % distinct video ids: dictionary-encoding them cost
    1.06 ms a file instead of 0.77, for files 8 % larger (200 of its files, measured)."""
    arr = col.chunk(0) if col.num_chunks == 1 else col
    if isinstance(arr, pa.DictionaryArray) and arr.null_count == 0:
        return 2 * len(arr.dictionary) <= len(arr)
    sample = col.slice(0, TEXT_SAMPLE)
    if isinstance(sample.type, pa.DictionaryType):
        sample = pa.chunked_array([c.indices for c in sample.chunks], sample.type.index_type)
    return 2 * pc.count_distinct(sample, mode="all").as_py() <= len(sample)


def _row_groups(rows, size: int):
    """A group's rows as tables of `size` rows (the last one smaller): one Parquet row group each."""
    if isinstance(rows, pa.Table):
        if rows.num_rows <= size:
            yield rows  # an empty table too: an empty file
            return
        for start in range(0, rows.num_rows, size):
            yield rows.slice(start, size)
        return
    held, n = [], 0
    for piece in rows():
        held.append(piece)
        n += piece.num_rows
        while n >= size:
            table = concat_pieces(held)
            yield table.slice(0, size)
            held, n = [table.slice(size)], n - size
    if n:
        yield concat_pieces(held)


def concat_pieces(tables: list[pa.Table]) -> pa.Table:
    """Pieces of one group as one table, whatever each piece holds: a text column that one piece holds decoded
    is decoded in all (with 64-bit offsets if any piece has them: accumulate.regroup); dictionary codes take the
    widest piece's width (a share narrows them to 16 bits where its dictionary fits)."""
    first = tables[0].schema
    if all(t.schema == first for t in tables):
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    fields = []
    for f in first:
        types = [t.schema.field(f.name).type for t in tables]
        plain = [x for x in types if not pa.types.is_dictionary(x)]
        large = [x for x in plain if pa.types.is_large_string(x) or pa.types.is_large_binary(x)]
        fields.append(f.with_type((large or plain)[0] if plain else max(types, key=lambda x: x.index_type.bit_width)))
    schema = pa.schema(fields, metadata=first.metadata)
    return pa.concat_tables([t if t.schema == schema else t.cast(schema) for t in tables])


LEVELLED = {"zstd", "gzip", "brotli"}


def object_metadata_of(rows: int, moments: stats.Moments) -> dict[str, str]:
    """The user metadata of a data file on S3: its row count, and its viewing_percentage count, mean and M2."""
    return {"rows": str(rows), "vp-n": str(moments.n), "vp-mean": repr(moments.mean), "vp-m2": repr(moments.m2)}


def parquet_options(properties: dict) -> dict:
    """pyarrow ParquetWriter options from the table's properties (pyiceberg's, with the level only where the
    codec has one: pyarrow refuses a level for snappy, lz4 and no compression)."""
    options = _get_parquet_writer_kwargs(properties)
    if options["compression"] not in LEVELLED or "write.parquet.compression-level" not in properties:
        options.pop("compression_level", None)
    return options


def _plain_types(schema: pa.Schema) -> pa.Schema:
    """large_string/large_binary → string/binary: the same Parquet types, no 64-bit offset copies."""
    swap = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    return pa.schema([f.with_type(swap.get(f.type, f.type)) for f in schema], metadata=schema.metadata)


def only_used_values(table: pa.Table) -> pa.Table:
    """Each dictionary-encoded column with only the values its rows use.

    A partition's rows come with the dictionaries of the reads they came from (a join's attributes with the
    dimension's whole column), and Parquet stores a column's dictionary whole in each file: with 70,000 distinct
    video ids in a source, a 2,215-row file was 267 kB, 120 bytes a row. A column with nulls is left as it is
    (the parsed and partitioned tables have none in dictionary columns)."""
    columns, changed = [], False
    for col in table.columns:
        arr = col.chunk(0) if isinstance(col, pa.ChunkedArray) and col.num_chunks == 1 else col
        if isinstance(arr, pa.DictionaryArray) and arr.null_count == 0 and len(arr.dictionary):
            codes = arr.indices.to_numpy(zero_copy_only=False)
            if 4 * len(codes) < len(arr.dictionary):  # a few rows of a big dictionary: sort the rows' codes
                used, codes = np.unique(codes, return_inverse=True)
            else:  # count per value, in one pass over the rows
                seen = np.bincount(codes, minlength=len(arr.dictionary)).astype(bool)
                if seen.all():
                    columns.append(col)
                    continue
                used, codes = np.flatnonzero(seen), (np.cumsum(seen) - 1)[codes]
            if len(used) < len(arr.dictionary):
                indices = pa.array(codes.astype(arr.indices.type.to_pandas_dtype()))
                col, changed = pa.DictionaryArray.from_arrays(indices, arr.dictionary.take(pa.array(used))), True
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=table.schema) if changed else table


class _Conform:
    """Puts rows into the table's column order and types (dictionary-encoded strings stay encoded: Parquet stores
    them as strings; columns the rows lack are null). How is worked out once per distinct input schema, not once
    per file: a backfill writes thousands of small files of the same schema."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.plans: dict = {}  # input schema -> (output schema, per column: (name or None, cast type or None))

    def __call__(self, rows: pa.Table) -> pa.Table:
        plan = self.plans.get(rows.schema)
        if plan is None:
            plan = self.plans[rows.schema] = self._plan(rows.schema)
        out_schema, steps = plan
        columns = []
        for f, (name, cast) in zip(self.schema, steps):
            if name is None:
                columns.append(pa.nulls(rows.num_rows, f.type))
            else:
                columns.append(rows[name] if cast is None else rows[name].cast(cast))
        return pa.Table.from_arrays(columns, schema=out_schema)

    def _plan(self, have: pa.Schema):
        fields, steps = [], []
        for f in self.schema:
            if f.name not in have.names:
                fields.append(f)
                steps.append((None, None))
                continue
            t = have.field(f.name).type
            if pa.types.is_dictionary(t) and t.value_type == f.type:
                fields.append(f.with_type(t))
                steps.append((f.name, None))
            else:
                fields.append(f)
                steps.append((f.name, None if t == f.type else f.type))
        return pa.schema(fields, metadata=self.schema.metadata), steps


def to_date(days: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + int(days))


def with_path(data_file: DataFile, path: str) -> DataFile:
    """A copy of a DataFile's metadata (partition, metrics) for the same bytes stored at another path."""
    new = copy.copy(data_file)  # a DataFile is a Record whose field 1 is the path (no setter)
    new._data = list(data_file._data)
    new[1] = path
    return new
