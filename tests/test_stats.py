"""pipeline.report.stats: (n, mean, M2, min, max) summaries merged with Chan's formula, in any tree shape.

Expected values come from exact rational arithmetic (fractions.Fraction over the float inputs), so the tests
do not depend on numpy's own summation order.
"""
from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from pipeline.report.stats import Moments, chunk, combine, summary, tree_reduce

USERS_SAMPLE = [1 / k for k in range(2, 18)]  # 1/2, 1/3, ..., 1/17: the users' check


def exact(values) -> dict:
    """rows, mean, population/sample std, min, max computed exactly (then rounded once)."""
    fv = [Fraction(v) for v in values]
    n = len(fv)
    mean = sum(fv) / n
    m2 = sum((x - mean) ** 2 for x in fv)
    return {"rows": n, "vp_mean": float(mean), "vp_std": math.sqrt(float(m2 / n)),
            "vp_std_sample": math.sqrt(float(m2 / (n - 1))) if n > 1 else None,
            "vp_min": float(min(fv)), "vp_max": float(max(fv))}


def assert_close(got: dict, want: dict, rel: float = 1e-12):
    assert got["rows"] == want["rows"]
    for k in ("vp_mean", "vp_std", "vp_std_sample"):
        if want[k] is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(want[k], rel=rel, abs=0), k
    assert got["vp_min"] == want["vp_min"]
    assert got["vp_max"] == want["vp_max"]


def random_chunking(values, rng: random.Random, max_pieces: int) -> list[list[float]]:
    """Split `values` at random cut points (empty pieces allowed)."""
    cuts = sorted(rng.randint(0, len(values)) for _ in range(rng.randint(0, max_pieces)))
    bounds = [0, *cuts, len(values)]
    return [values[a:b] for a, b in zip(bounds, bounds[1:])]


# --------------------------------------------------------------------------------------- users' sample
def test_users_sample():
    s = summary(chunk(USERS_SAMPLE))
    assert s["rows"] == 16
    assert abs(s["vp_mean"] - 0.15247203266504736) <= 1e-12
    assert abs(s["vp_std"] - 0.11614732270301785) <= 1e-12
    assert s["vp_min"] == 1 / 17
    assert s["vp_max"] == 0.5
    assert_close(s, exact(USERS_SAMPLE))
    # the sample std is the population one scaled by sqrt(n / (n - 1))
    assert s["vp_std_sample"] == pytest.approx(s["vp_std"] * math.sqrt(16 / 15), rel=1e-14)


def test_users_sample_population_std_matches_numpy():
    s = summary(chunk(USERS_SAMPLE))
    assert s["vp_std"] == pytest.approx(float(np.std(USERS_SAMPLE)), rel=1e-13)          # ddof=0
    assert s["vp_std_sample"] == pytest.approx(float(np.std(USERS_SAMPLE, ddof=1)), rel=1e-13)


def test_summary_keys():
    assert set(summary(chunk([0.5, 0.25]))) == {"rows", "vp_mean", "vp_std", "vp_std_sample", "vp_min",
                                                "vp_max"}


# -------------------------------------------------------------------------------------- tree shapes
@pytest.mark.parametrize("split_every", range(2, 18))
def test_users_sample_every_split_every_from_singletons(split_every):
    want = exact(USERS_SAMPLE)
    got = summary(tree_reduce([chunk([v]) for v in USERS_SAMPLE], split_every))
    assert_close(got, want)
    assert abs(got["vp_mean"] - 0.15247203266504736) <= 1e-12
    assert abs(got["vp_std"] - 0.11614732270301785) <= 1e-12


def test_users_sample_random_chunkings_orders_and_shapes():
    want = exact(USERS_SAMPLE)
    rng = random.Random(1234)
    for _ in range(300):
        values = USERS_SAMPLE[:]
        rng.shuffle(values)
        pieces = random_chunking(values, rng, max_pieces=20)
        parts = [chunk(p) for p in pieces]
        rng.shuffle(parts)
        got = summary(tree_reduce(parts, rng.randint(2, 17)))
        assert_close(got, want)


def test_large_random_data_any_tree_shape():
    rng = random.Random(99)
    values = [rng.randint(0, 10000) / 10000 for _ in range(5000)]  # 4-decimal percentages, as in the data
    want = exact(values)
    for trial in range(40):
        vals = values[:]
        rng.shuffle(vals)
        parts = [chunk(np.array(p)) for p in random_chunking(vals, rng, max_pieces=200)]
        assert_close(summary(tree_reduce(parts, rng.randint(2, 33))), want)
    # also a left fold with `combine` and a right fold: two extreme trees
    parts = [chunk(values[i:i + 37]) for i in range(0, len(values), 37)]
    left = Moments.empty()
    for p in parts:
        left = combine(left, p)
    right = Moments.empty()
    for p in reversed(parts):
        right = combine(p, right)
    assert_close(summary(left), want)
    assert_close(summary(right), want)


def test_combine_is_symmetric_and_matches_concatenation():
    rng = random.Random(5)
    for _ in range(100):
        a = [rng.random() for _ in range(rng.randint(1, 30))]
        b = [rng.random() * 3 - 1 for _ in range(rng.randint(1, 30))]
        ab, ba = combine(chunk(a), chunk(b)), combine(chunk(b), chunk(a))
        assert ab.n == ba.n == len(a) + len(b)
        assert ab.mean == pytest.approx(ba.mean, rel=1e-14)
        assert ab.m2 == pytest.approx(ba.m2, rel=1e-13)
        assert_close(summary(ab), exact(a + b))


def test_tree_reduce_split_every_below_two_is_clamped():
    parts = [chunk([v]) for v in USERS_SAMPLE]
    for split_every in (0, 1):
        assert_close(summary(tree_reduce(parts, split_every)), exact(USERS_SAMPLE))


# --------------------------------------------------------------------------------- numerical stability
def test_numerical_stability_large_offset():
    """1e9 + small offsets: variance is that of the offsets; a naive sum-of-squares formula loses it all."""
    rng = np.random.default_rng(2024)
    x = 1e9 + rng.random(20000)
    offsets = x - 1e9  # exact (Sterbenz), so numpy on the offsets is an accurate reference
    want_var = float(np.var(offsets))
    want_mean = 1e9 + float(np.mean(offsets))

    naive_var = float(np.sum(x * x) / x.size - (np.sum(x) / x.size) ** 2)
    assert abs(naive_var - want_var) > 10 * want_var  # proof that this input defeats the naive formula

    whole = summary(chunk(x))
    assert whole["vp_mean"] == pytest.approx(want_mean, rel=1e-15)
    assert whole["vp_std"] ** 2 == pytest.approx(want_var, rel=1e-9)

    # and through a tree of small chunks (Chan's merge with large means and tiny deltas). Each chunk mean near
    # 1e9 is itself rounded to ~6e-8, which bounds what any (n, mean, M2) merge can do: ~1e-8 relative here,
    # against the naive formula's > 1000% above.
    parts = [chunk(x[i:i + 97]) for i in range(0, x.size, 97)]
    for split_every in (2, 3, 8, 64):
        s = summary(tree_reduce(parts, split_every))
        assert s["rows"] == x.size
        assert s["vp_mean"] == pytest.approx(want_mean, rel=1e-15)
        assert s["vp_std"] ** 2 == pytest.approx(want_var, rel=1e-7)
        assert s["vp_min"] == float(x.min()) and s["vp_max"] == float(x.max())


def test_constant_values_have_zero_spread():
    for v in (0.0, 0.3, 1e9 + 0.1):
        s = summary(tree_reduce([chunk([v] * k) for k in (1, 5, 13, 2)], 2))
        assert s["rows"] == 21
        assert s["vp_mean"] == v
        assert s["vp_std"] == 0.0
        assert s["vp_std_sample"] == 0.0
        assert s["vp_min"] == s["vp_max"] == v


# -------------------------------------------------------------------------------------------- empty
def test_empty_gives_none():
    for m in (chunk([]), chunk(np.empty(0)), chunk(pa.array([], pa.float64())),
              chunk(pa.chunked_array([], pa.float64())), tree_reduce([]), tree_reduce([chunk([])] * 5, 2),
              Moments.empty()):
        assert m.n == 0
        assert summary(m) == {"rows": 0, "vp_mean": None, "vp_std": None, "vp_std_sample": None,
                              "vp_min": None, "vp_max": None}


def test_empty_is_identity_of_combine():
    m = chunk(USERS_SAMPLE)
    assert combine(Moments.empty(), m) == m
    assert combine(m, Moments.empty()) == m
    parts = [chunk([]), chunk(USERS_SAMPLE[:5]), chunk([]), chunk([]), chunk(USERS_SAMPLE[5:]), chunk([])]
    assert_close(summary(tree_reduce(parts, 2)), exact(USERS_SAMPLE))


def test_single_value():
    s = summary(chunk([0.25]))
    assert s == {"rows": 1, "vp_mean": 0.25, "vp_std": 0.0, "vp_std_sample": None, "vp_min": 0.25,
                 "vp_max": 0.25}


# ------------------------------------------------------------------------------------- chunk inputs
def test_chunk_accepts_arrow_with_nulls_and_chunked():
    want = exact(USERS_SAMPLE)
    with_nulls = pa.array(USERS_SAMPLE[:8] + [None, None] + USERS_SAMPLE[8:], pa.float64())
    assert_close(summary(chunk(with_nulls)), want)
    chunked = pa.chunked_array([pa.array(USERS_SAMPLE[:3]), pa.array([None], pa.float64()),
                                pa.array([], pa.float64()), pa.array(USERS_SAMPLE[3:])])
    assert_close(summary(chunk(chunked)), want)
    assert_close(summary(chunk(np.array(USERS_SAMPLE))), want)
    assert_close(summary(chunk(tuple(USERS_SAMPLE))), want)


def test_chunk_all_null_arrow_is_empty():
    assert chunk(pa.array([None, None], pa.float64())).n == 0
    assert chunk(pa.chunked_array([pa.array([None], pa.float64())])).n == 0


# ------------------------------------------------------------------------------ to_dict / from_dict
def test_to_dict_from_dict_round_trip_through_json():
    m = chunk(USERS_SAMPLE)
    d = m.to_dict()
    assert set(d) == {"n", "mean", "m2", "min", "max"}
    assert d["n"] == 16 and d["min"] == 1 / 17 and d["max"] == 0.5
    back = Moments.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert back == m
    assert type(back.n) is int


def test_empty_to_dict_is_valid_json_and_round_trips():
    d = Moments.empty().to_dict()
    assert d["n"] == 0 and d["min"] is None and d["max"] is None
    text = json.dumps(d, allow_nan=False)  # no Infinity in stored metadata
    back = Moments.from_dict(json.loads(text))
    assert back.n == 0
    assert combine(back, chunk([0.5])) == chunk([0.5])


def test_from_dict_accepts_strings_as_stored_in_properties():
    """Values stored as strings (e.g. in snapshot/file properties) come back as numbers."""
    m = chunk(USERS_SAMPLE)
    as_strings = {k: repr(v) for k, v in m.to_dict().items()}
    assert Moments.from_dict(as_strings) == m


# ------------------------------------------------------------------------------------- on a cluster
def test_summaries_made_on_workers_reduce_as_local_ones(client):
    """Summaries computed by tasks on the workers (as `stats --recount` gets them) come back equal to local
    ones, and the driver's tree reduction of them is exact, whatever the fan-in."""
    rng = random.Random(7)
    values = [rng.randint(0, 10000) / 10000 for _ in range(3000)]
    pieces = random_chunking(values, rng, max_pieces=60)
    remote = client.gather([client.submit(chunk, p, pure=False) for p in pieces])
    local_parts = [chunk(p) for p in pieces]
    want = exact(values)
    for split_every in (2, 5, 8):
        got = tree_reduce(remote, split_every)
        assert isinstance(got, Moments)
        assert got == tree_reduce(local_parts, split_every)  # same tree, same rounding
        assert_close(summary(got), want)
    assert_close(summary(tree_reduce(local_parts, 3)), want)
    assert tree_reduce([], 8).n == 0
    assert tree_reduce([local_parts[0]], 8) == local_parts[0]
    assert tree_reduce([remote[0]], 8) == local_parts[0]
