"""Iceberg's `bucket[N]` transform on strings, so every engine agrees with our partition numbers.

Spec: (murmur3_x86_32(utf8 bytes, seed 0) & Integer.MAX_VALUE) % N. Vectorised over the *distinct*
values of an Arrow column (campaign ids repeat millions of times), then gathered back by the dictionary indices.
"""
from __future__ import annotations

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def bucket_of(value: str, n: int) -> int:
    """The bucket of one string."""
    return (mmh3.hash(value.encode("utf-8"), 0, signed=True) & 0x7FFFFFFF) % n


def bucket_array(values: pa.Array | pa.ChunkedArray, n: int) -> pa.Array:
    """Buckets (int32) of a string column; nulls get bucket 0 (campaign_id is never null in a table)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(values)
    per_value = np.fromiter((bucket_of(v, n) if v is not None else 0 for v in values.dictionary.to_pylist()),
                            dtype=np.int32, count=len(values.dictionary))
    indices = values.indices.fill_null(0).to_numpy(zero_copy_only=False)
    out = per_value[indices] if len(per_value) else np.zeros(len(values), np.int32)
    if values.null_count:
        out = np.where(values.is_null().to_numpy(zero_copy_only=False), 0, out).astype(np.int32)
    return pa.array(out, type=pa.int32())
