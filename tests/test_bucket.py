"""pipeline.table.bucket against an independent Murmur3 and against pyiceberg's own bucket transform.

Iceberg spec (Appendix A/B): bucket[N](s) = (murmur3_x86_32(utf8(s), seed 0) & Integer.MAX_VALUE) % N.
The reference below is a from-scratch pure-Python murmur3 — it shares no code with the pipeline (which uses
the `mmh3` C extension), so an agreement means both are right.
"""
from __future__ import annotations

import random

import pyarrow as pa
import pytest
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import StringType

from pipeline.table.bucket import bucket_array, bucket_of

# ---------------------------------------------------------------------------------------------- reference
_M32 = 0xFFFFFFFF


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 (Austin Appleby), returned as a signed 32-bit int like Java's/Iceberg's."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _M32
    n = len(data)
    nblocks = n // 4
    for i in range(nblocks):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * c1) & _M32
        k = _rotl32(k, 15)
        k = (k * c2) & _M32
        h ^= k
        h = _rotl32(h, 13)
        h = (h * 5 + 0xE6546B64) & _M32
    tail = data[4 * nblocks:]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        k = (k * c1) & _M32
        k = _rotl32(k, 15)
        k = (k * c2) & _M32
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


def ref_bucket(value: str, n: int) -> int:
    return (murmur3_x86_32(value.encode("utf-8")) & 0x7FFFFFFF) % n


def iceberg_bucket(value: str, n: int) -> int:
    """pyiceberg 0.12's own transform (what its readers/writers use for partition pruning)."""
    return BucketTransform(n).transform(StringType())(value)


# --------------------------------------------------------------------------------------------- test data
NS = [1, 2, 16, 64, 1000]

SAMPLES = [
    "",
    "iceberg",
    "a", "ab", "abc", "abcd", "abcde",            # every tail length 0..3 of the murmur3 block loop
    "campaign_00", "campaign_49", "campaign_50", "campaign_123456",
    "é", "café", "naïve résumé",                   # 2-byte UTF-8
    "日本語キャンペーン",                               # 3-byte UTF-8
    "🎬", "ad 🎬🍿 campaign", "👩‍👩‍👧‍👦",                 # 4-byte UTF-8, ZWJ sequence
    "e\u0301",                                      # decomposed é: different bytes from "é", other bucket allowed
    " leading and trailing ",
    "comma,inside", 'quote"inside', "tab\tinside",
    "x" * 1000,
]


def _random_strings(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ019_-., éüñßøЖж日本🎬😀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(count)]


# ------------------------------------------------------------------------------------- reference is right
def test_reference_murmur3_spec_vectors():
    # Iceberg spec, Appendix B: hash of the string "iceberg" and of the bytes 00 01 02 03
    assert murmur3_x86_32("iceberg".encode("utf-8")) == 1210000089
    assert murmur3_x86_32(bytes([0, 1, 2, 3])) == -188683207
    # spec: int/long 34 hash as the 8 little-endian bytes of the long
    assert murmur3_x86_32((34).to_bytes(8, "little")) == 2017239379
    # classic published MurmurHash3_x86_32 vectors (seed 0)
    assert murmur3_x86_32(b"") == 0
    assert murmur3_x86_32(b"hello") & _M32 == 0x248BFA47
    assert murmur3_x86_32(b"The quick brown fox jumps over the lazy dog") & _M32 == 0x2E4FF723


def test_spec_vector_through_pipeline():
    # "iceberg" hashes to 1210000089 (positive), so its bucket is just the hash mod N
    for n in NS + [7, 2**31 - 1]:
        assert bucket_of("iceberg", n) == 1210000089 % n


# ------------------------------------------------------------------------------------------ bucket_of
@pytest.mark.parametrize("n", NS)
def test_bucket_of_matches_reference_and_pyiceberg(n):
    for s in SAMPLES + _random_strings(300):
        got = bucket_of(s, n)
        assert got == ref_bucket(s, n), (s, n)
        assert got == iceberg_bucket(s, n), (s, n)
        assert 0 <= got < n
        assert isinstance(got, int)


def test_bucket_of_negative_hashes_are_masked_not_abs():
    """Half of all strings hash negative; Iceberg masks the sign bit (h & MAX_VALUE), it does not take abs()."""
    negatives = [s for s in _random_strings(200, seed=3) if murmur3_x86_32(s.encode()) < 0]
    assert len(negatives) > 20
    for s in negatives:
        h = murmur3_x86_32(s.encode())
        assert bucket_of(s, 1000) == (h & 0x7FFFFFFF) % 1000
    # where abs() would give another bucket, we must not be giving abs()'s answer
    differs = [s for s in negatives
               if (abs(murmur3_x86_32(s.encode())) % 1000) != (murmur3_x86_32(s.encode()) & 0x7FFFFFFF) % 1000]
    assert differs and all(bucket_of(s, 1000) != abs(murmur3_x86_32(s.encode())) % 1000 for s in differs)


def test_bucket_of_non_ascii_hashes_utf8_bytes():
    # "é" is C3 A9 in UTF-8 (not latin-1 E9, not UTF-16)
    for n in NS:
        assert bucket_of("é", n) == (murmur3_x86_32(b"\xc3\xa9") & 0x7FFFFFFF) % n
        assert bucket_of("🎬", n) == (murmur3_x86_32("🎬".encode("utf-8")) & 0x7FFFFFFF) % n
    # the latin-1 / UTF-16 encodings give different hashes, so the test above would catch a wrong encoding
    assert murmur3_x86_32(b"\xc3\xa9") != murmur3_x86_32(b"\xe9")
    assert murmur3_x86_32("🎬".encode("utf-8")) != murmur3_x86_32("🎬".encode("utf-16-le"))


def test_bucket_of_empty_string():
    for n in NS:
        assert bucket_of("", n) == 0 == ref_bucket("", n) == iceberg_bucket("", n)


def test_n_equal_one_is_always_bucket_zero():
    assert {bucket_of(s, 1) for s in SAMPLES} == {0}


def test_buckets_spread_over_all_values():
    """Sanity: 64 buckets of 5000 campaign ids are all used, none holds more than 3x its share."""
    ids = [f"campaign_{i:05d}" for i in range(5000)]
    counts = [0] * 64
    for s in ids:
        counts[bucket_of(s, 64)] += 1
    assert min(counts) > 0
    assert max(counts) < 3 * 5000 / 64


# ---------------------------------------------------------------------------------------- bucket_array
def _check_array(arr, values: list[str], n: int):
    out = bucket_array(arr, n)
    assert isinstance(out, pa.Array)
    assert out.type == pa.int32()
    assert len(out) == len(values)
    assert out.null_count == 0
    assert out.to_pylist() == [ref_bucket(v, n) for v in values]


@pytest.mark.parametrize("n", NS)
def test_bucket_array_plain_with_repeats(n):
    rng = random.Random(n)
    distinct = SAMPLES + _random_strings(50)
    values = [rng.choice(distinct) for _ in range(2000)]  # many repeats, as campaign ids are
    _check_array(pa.array(values, pa.string()), values, n)
    _check_array(pa.array(values, pa.large_string()), values, n)


@pytest.mark.parametrize("n", NS)
def test_bucket_array_matches_pyiceberg_pyarrow_transform(n):
    values = SAMPLES + _random_strings(200)
    arr = pa.array(values, pa.string())
    theirs = BucketTransform(n).pyarrow_transform(StringType())(arr)
    assert bucket_array(arr, n).to_pylist() == theirs.to_pylist()


@pytest.mark.parametrize("n", [2, 16, 1000])
def test_bucket_array_chunked(n):
    chunks = [["é", "a", "é"], [], ["🎬", "", "campaign_01"], ["a"] * 5, SAMPLES]
    values = [v for c in chunks for v in c]
    arr = pa.chunked_array([pa.array(c, pa.string()) for c in chunks], type=pa.string())
    _check_array(arr, values, n)


def test_bucket_array_chunked_without_chunks_and_empty():
    assert bucket_array(pa.chunked_array([], type=pa.string()), 16).to_pylist() == []
    assert bucket_array(pa.array([], pa.string()), 16).to_pylist() == []
    out = bucket_array(pa.array([], pa.string()), 16)
    assert out.type == pa.int32()


@pytest.mark.parametrize("n", [1, 16, 64])
def test_bucket_array_dictionary(n):
    values = ["campaign_02", "é", "campaign_02", "🎬", "", "é", "campaign_02"]
    _check_array(pa.array(values).dictionary_encode(), values, n)


def test_bucket_array_dictionary_with_unused_entries_and_narrow_indices():
    dictionary = pa.array(["never_used", "x", "é", "also_unused", "🎬"])
    indices = pa.array([4, 1, 1, 2, 4, 1], pa.int8())
    arr = pa.DictionaryArray.from_arrays(indices, dictionary)
    _check_array(arr, ["🎬", "x", "x", "é", "🎬", "x"], 64)


def test_bucket_array_sliced_inputs():
    values = ["a", "b", "é", "🎬", "c", "d"]
    _check_array(pa.array(values).slice(2, 3), values[2:5], 1000)
    _check_array(pa.array(values).dictionary_encode().slice(1, 4), values[1:5], 1000)


def test_bucket_array_chunked_dictionaries_with_different_dictionaries():
    """Chunks of a dictionary column read from different files have different dictionaries."""
    c1 = pa.array(["a", "b", "a"]).dictionary_encode()
    c2 = pa.array(["é", "a", "🎬"]).dictionary_encode()
    arr = pa.chunked_array([c1, c2])
    _check_array(arr, ["a", "b", "a", "é", "a", "🎬"], 16)


def test_bucket_array_nulls_get_bucket_zero_as_documented():
    """bucket_array's docstring: "nulls get bucket 0". (Iceberg itself maps null to null; campaign_id is never
    null in a table, so this only matters for the documented contract.)"""
    arr = pa.array(["x", None, "campaign_07", None])
    out = bucket_array(arr, 16).to_pylist()
    assert out[0] == ref_bucket("x", 16) and out[2] == ref_bucket("campaign_07", 16)
    assert ref_bucket("x", 16) != 0  # so a null that borrowed "x"'s bucket would be visible
    assert out[1] == 0 and out[3] == 0, out
