"""pipeline.config.load_settings: shipped YAML defaults < DASK_IMPRESSIONS__* environment < CLI keywords.

dask.config reads the environment only in `dask.config.refresh()`, so tests that set variables refresh, and
the fixture refreshes again after the environment is restored, leaving the global config as it found it.
Also the command line's usage errors: exit 2, one readable line on stderr, no traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest
import yaml

import pipeline
from pipeline.config import load_settings
from pipeline.errors import UsageError

YAML_PATH = Path(pipeline.__file__).with_name("impressions.yaml")
MiB, GiB = 2**20, 2**30


def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.upper().startswith("DASK_IMPRESSIONS") or k.upper() == "DASK_SCHEDULER_ADDRESS":
            monkeypatch.delenv(k)


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch):
    """No stray DASK_IMPRESSIONS__* from the caller's shell; refresh before and after (env restored)."""
    _clean_env(monkeypatch)
    dask.config.refresh()
    yield
    monkeypatch.undo()
    dask.config.refresh()


@pytest.fixture
def env(monkeypatch):
    """env(NAME=value, ...) sets variables and makes dask.config read them."""
    def set_env(**variables):
        for k, v in variables.items():
            monkeypatch.setenv(k, v)
        dask.config.refresh()
    return set_env


# ------------------------------------------------------------------------------------------- defaults
def test_yaml_is_shipped_with_the_package():
    assert YAML_PATH.is_file()
    import tomllib
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["pipeline"]


def test_defaults_come_from_the_shipped_yaml():
    d = yaml.safe_load(YAML_PATH.read_text())["impressions"]
    s = load_settings()
    assert s.warehouse == d["warehouse"] == "./warehouse"
    assert s.catalog is None and d["catalog"] is None
    assert s.namespace == d["namespace"] == "impressions"
    assert s.buckets == d["buckets"] == 64           # DESIGN: --buckets default 64
    assert s.workers == d["workers"]
    assert s.threads_per_worker == d["threads-per-worker"]
    assert s.scheduler is None
    assert s.read.range_size == 128 * MiB and d["read"]["range-size"] == "128 MiB"
    assert s.read.index_spacing == 4 * MiB  # index pass peak: 0.35 GiB at 4 MiB, 2.1 GiB at 32 MiB (2 GB CSV)
    assert s.read.small_file == 32 * MiB
    assert s.read.block_size == 16 * MiB
    assert s.read.max_line == 16 * MiB
    assert s.read.quarantine_line_bytes == d["read"]["quarantine-line-bytes"] == 65536
    assert s.memory_budget == 128 * MiB  # beyond it a worker spills to disk: its files stay one per partition
    assert s.compression == d["write"]["compression"] == "zstd"
    assert s.row_group_rows == d["write"]["row-group-rows"]
    assert s.quarantine_table == "quarantine"     # DESIGN: impressions.quarantine
    assert s.dimension_table == "campaigns"       # DESIGN: impressions.campaigns
    assert s.dimension_date_column is None
    assert s.dimension_types == {}


# (dotted key under impressions., value to set, attribute path of Settings, expected)
EVERY_KEY = [
    ("warehouse", "s3://bucket/tables", "warehouse", "s3://bucket/tables"),
    ("catalog", "glue", "catalog", "glue"),
    ("namespace", "ads", "namespace", "ads"),
    ("buckets", 32, "buckets", 32),
    ("workers", 5, "workers", 5),
    ("threads-per-worker", 4, "threads_per_worker", 4),
    ("scheduler", "tcp://10.0.0.1:8786", "scheduler", "tcp://10.0.0.1:8786"),
    ("read.range-size", "512 MiB", "read.range_size", 512 * MiB),
    ("read.index-spacing", "8 MiB", "read.index_spacing", 8 * MiB),
    ("read.index-threads", 4, "read.index_threads", 4),
    ("read.small-file", "1 MiB", "read.small_file", 1 * MiB),
    ("read.block-size", "4 MiB", "read.block_size", 4 * MiB),
    ("read.max-line", "2 MiB", "read.max_line", 2 * MiB),
    ("read.quarantine-line-bytes", "1 KiB", "read.quarantine_line_bytes", 1024),
    ("write.memory-budget", "3 GiB", "memory_budget", 3 * GiB),
    ("write.compression", "snappy", "compression", "snappy"),
    ("write.row-group-rows", 1000, "row_group_rows", 1000),
    ("tables.quarantine", "bad_rows", "quarantine_table", "bad_rows"),
    ("tables.dimension", "campaign_meta", "dimension_table", "campaign_meta"),
    ("dimension.date-column", "ad_date", "dimension_date_column", "ad_date"),
    ("dimension.types", {"budget": "double"}, "dimension_types", {"budget": "double"}),
    ("tables.loads", "load_history", "loads_table", "load_history"),
    ("records.heartbeat", "10s", "records.heartbeat", 10.0),
    ("records.stale-after", "1h", "records.stale_after", 3600.0),
    ("maintenance.target-file-size", "64 MiB", "maintenance.target_file_size", 64 * MiB),
    ("maintenance.older-than", "12h", "maintenance.older_than", __import__("datetime").timedelta(hours=12)),
    ("maintenance.retain-last", 3, "maintenance.retain_last", 3),
]


def _attr(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("key,value,attr,expected", EVERY_KEY, ids=[k[0] for k in EVERY_KEY])
def test_every_key_is_honoured(key, value, attr, expected):
    with dask.config.set({f"impressions.{key}": value}):
        assert _attr(load_settings(), attr) == expected


def test_every_yaml_key_is_covered_above():
    """A key added to the YAML must be added to EVERY_KEY (and so be shown to have an effect)."""
    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    in_yaml = set(leaves(yaml.safe_load(YAML_PATH.read_text())["impressions"]))
    own = {k for k in in_yaml if k.split(".")[0] not in ELSEWHERE}
    assert own == {k[0] for k in EVERY_KEY}
    # the sections of other parts (CloudWatch, S3 retries, the Batch node, ...) are exercised by their own tests:
    # each key must at least be named there, as `impressions.a.b-c` or DASK_IMPRESSIONS__A__B_C
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name)
    docs = "\n".join(p.read_text() for p in [Path(__file__).parents[1] / "README.md",
                                              *(Path(__file__).parents[1] / "docs").glob("*.md")])
    for key in sorted(in_yaml - own):
        env_name = "DASK_IMPRESSIONS__" + key.upper().replace(".", "__").replace("-", "_")
        leaf = key.split(".")[-1]
        assert f"impressions.{key}" in tests or env_name in tests or f'"{leaf}"' in tests, f"{key} is not tested"
        assert f"`{key}`" in docs, f"{key} is not documented in README.md or docs/"


ELSEWHERE = {"cloudwatch", "node", "cloudprovider", "s3", "worker-start"}


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(Exception):
        s.buckets = 3


# ---------------------------------------------------------------------------------------- environment
def test_env_buckets(env):
    env(DASK_IMPRESSIONS__BUCKETS="32")
    assert load_settings().buckets == 32


def test_env_range_size_with_units(env):
    env(DASK_IMPRESSIONS__READ__RANGE_SIZE="256 MiB")
    s = load_settings()
    assert s.read.range_size == 256 * MiB
    assert s.read.block_size == 16 * MiB  # siblings in the same section keep their defaults


def test_env_range_size_with_literal_quotes(env):
    # DESIGN writes DASK_IMPRESSIONS__READ__RANGE_SIZE="256 MiB"; in an env file the quotes may survive
    env(DASK_IMPRESSIONS__READ__RANGE_SIZE='"256 MiB"')
    assert load_settings().read.range_size == 256 * MiB


def test_env_underscores_reach_dashed_keys(env):
    env(DASK_IMPRESSIONS__THREADS_PER_WORKER="3", DASK_IMPRESSIONS__WRITE__MEMORY_BUDGET="2 GiB",
        DASK_IMPRESSIONS__READ__QUARANTINE_LINE_BYTES="4096", DASK_IMPRESSIONS__TABLES__DIMENSION="campaign_meta",
        DASK_IMPRESSIONS__WAREHOUSE="s3://b/w", DASK_IMPRESSIONS__CATALOG="glue")
    s = load_settings()
    assert s.threads_per_worker == 3
    assert s.memory_budget == 2 * GiB
    assert s.read.quarantine_line_bytes == 4096
    assert s.dimension_table == "campaign_meta"
    assert s.warehouse == "s3://b/w"
    assert s.catalog == "glue"


def test_env_scheduler_address(env):
    env(DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:9999")
    assert load_settings().scheduler == "tcp://127.0.0.1:9999"
    assert load_settings(scheduler="tcp://other:1").scheduler == "tcp://other:1"


def test_env_is_forgotten_after_restore_and_refresh(env, monkeypatch):
    env(DASK_IMPRESSIONS__BUCKETS="32")
    assert load_settings().buckets == 32
    monkeypatch.delenv("DASK_IMPRESSIONS__BUCKETS")
    dask.config.refresh()
    assert load_settings().buckets == 64


# ------------------------------------------------------------------------------------ CLI keywords win
def test_keyword_overrides_win_over_env(env):
    env(DASK_IMPRESSIONS__BUCKETS="32", DASK_IMPRESSIONS__WORKERS="7", DASK_IMPRESSIONS__WAREHOUSE="/env/wh")
    s = load_settings(buckets=16, warehouse="/cli/wh")
    assert s.buckets == 16
    assert s.warehouse == "/cli/wh"
    assert s.workers == 7  # not overridden: the environment's value


def test_none_keyword_means_not_given():
    s = load_settings(warehouse=None, catalog=None, scheduler=None, workers=None)
    assert s.warehouse == "./warehouse" and s.workers == 2 and s.catalog is None


def test_keyword_overrides_win_over_dask_config_set():
    with dask.config.set({"impressions.workers": 6, "impressions.catalog": "sqlite:///x.db"}):
        s = load_settings(workers=3)
        assert s.workers == 3
        assert s.catalog == "sqlite:///x.db"


def test_unknown_keyword_is_an_error():
    with pytest.raises(TypeError):
        load_settings(no_such_option=1)


# ------------------------------------------------------------------------------------------- invalid
@pytest.mark.parametrize("kw", [{"buckets": 0}, {"buckets": -3}, {"buckets": 1_000_001}, {"workers": 0}])
def test_invalid_keyword_values(kw):
    with pytest.raises(UsageError):
        load_settings(**kw)


@pytest.mark.parametrize("variables", [
    {"DASK_IMPRESSIONS__BUCKETS": "0"},
    {"DASK_IMPRESSIONS__WORKERS": "0"},
    {"DASK_IMPRESSIONS__READ__RANGE_SIZE": "lots"},
    {"DASK_IMPRESSIONS__WRITE__MEMORY_BUDGET": "a bit"},
    {"DASK_IMPRESSIONS__READ__BLOCK_SIZE": "512 B"},                       # < 1 KiB
    {"DASK_IMPRESSIONS__READ__RANGE_SIZE": "512 B"},                       # < 1 KiB
    {"DASK_IMPRESSIONS__READ__MAX_LINE": "100"},                           # < 1 KiB
], ids=lambda v: ",".join(f"{k.removeprefix('DASK_IMPRESSIONS__')}={x}" for k, x in v.items()))
def test_invalid_env_values_raise_usage_error(env, variables):
    env(**variables)
    with pytest.raises(UsageError) as e:
        load_settings()
    assert str(e.value)  # a message for the one stderr line


@pytest.mark.parametrize("value", ["abc", "[1, 2]"])
def test_non_integer_buckets_is_a_usage_error(env, value):
    """A typo in DASK_IMPRESSIONS__BUCKETS is a configuration error (exit 2), not a crash."""
    env(DASK_IMPRESSIONS__BUCKETS=value)
    with pytest.raises(UsageError):
        load_settings()


def test_block_size_equal_to_range_size_is_allowed():
    with dask.config.set({"impressions.read.range-size": "1 MiB", "impressions.read.block-size": "1 MiB"}):
        s = load_settings()
    assert s.read.block_size == s.read.range_size == MiB


def test_block_size_larger_than_range_size_is_capped(env):
    """A small range is read in blocks of its own size (block-size 16 MiB default, range 256 KiB)."""
    env(DASK_IMPRESSIONS__READ__RANGE_SIZE="256 KiB")
    s = load_settings()
    assert s.read.range_size == 256 * 1024
    assert s.read.block_size == 256 * 1024


# ------------------------------------------------------------------------------------------------ CLI
COMMANDS = ["generate", "partition", "join", "update", "stats", "run", "demo"]


def run_cli(args, tmp_path, extra_env=None, module=False):
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("DASK_IMPRESSIONS") and k != "IMPRESSIONS_DEBUG"}
    env.update(extra_env or {})
    exe = [sys.executable, "-m", "pipeline"] if module else [str(Path(sys.executable).with_name("impressions"))]
    return subprocess.run(exe + list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_top_level_help(tmp_path):
    r = run_cli(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for cmd in COMMANDS:
        assert cmd in r.stdout
    for opt in ("--warehouse", "--catalog", "--scheduler", "--workers"):
        assert opt in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", COMMANDS)
def test_subcommand_help(tmp_path, cmd):
    r = run_cli([cmd, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"impressions {cmd}" in r.stdout
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "warehouse").exists()  # --help does nothing


def test_module_entry_point_help(tmp_path):
    r = run_cli(["--help"], tmp_path, module=True)
    assert r.returncode == 0
    assert "partition" in r.stdout


def test_subcommand_options_in_help(tmp_path):
    expected = {"generate": ["--rows", "--days", "--campaigns", "--changed", "--seed"],
                "partition": ["--buckets", "--replace"], "join": ["--full"],
                "update": ["--full-snapshot", "--dry-run"], "stats": ["--json", "--recount"]}
    for cmd, opts in expected.items():
        out = run_cli([cmd, "--help"], tmp_path).stdout
        for opt in opts:
            assert opt in out, (cmd, opt)


def _one_line_usage_error(r):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stdout == ""  # stdout carries JSON lines only; nothing here
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["stats", "t", "--bogus"],
    ["frobnicate"],
    ["stats"],                                  # missing TABLE
    ["partition", "a.gz", "T", "--buckets", "abc"],
    ["generate", "out", "--rows", "many"],
    ["--workers", "two", "stats", "t"],
], ids=lambda a: " ".join(a))
def test_bad_arguments_one_line_exit_2(tmp_path, args):
    _one_line_usage_error(run_cli(args, tmp_path))


@pytest.mark.parametrize("args", [
    ["partition", "only_a_table"],              # needs SOURCE... TABLE
    ["generate", "out", "--campaigns", "5", "--changed", "9"],
    ["generate", "out", "--days", "0"],
    ["partition", "a.gz", "T", "--buckets", "0"],
    ["--workers", "0", "stats", "t"],
], ids=lambda a: " ".join(a))
def test_semantic_usage_errors_one_line_exit_2(tmp_path, args):
    r = run_cli(args, tmp_path)
    _one_line_usage_error(r)
    assert r.stderr.startswith("impressions: error:")


def test_bad_environment_value_is_a_usage_error(tmp_path):
    r = run_cli(["stats", "t"], tmp_path, {"DASK_IMPRESSIONS__READ__RANGE_SIZE": "lots"})
    _one_line_usage_error(r)
    assert "lots" in r.stderr


def test_non_integer_buckets_env_is_a_usage_error_on_the_cli(tmp_path):
    r = run_cli(["stats", "t"], tmp_path, {"DASK_IMPRESSIONS__BUCKETS": "abc"})
    _one_line_usage_error(r)


# ---------------------------------------------------------------------------------------- worker processes

MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _malloc_env() -> dict:
    return {k: os.environ.get(k) for k in MALLOC}


@pytest.fixture
def malloc_env_restored():
    """A nanny copies pre-spawn-environ into its own process's environment for good, and there it takes
    precedence over the config (distributed's rule): each cluster below starts from the environment as it was."""
    saved = {k: os.environ.get(k) for k in MALLOC}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_worker_processes_start_with_the_shipped_malloc_settings(malloc_env_restored):
    """The YAML's `distributed.nanny.pre-spawn-environ` reaches real worker processes (Dask's own default of the
    same key must not win, whatever the import order or a config refresh), and a user's Dask config overrides it."""
    from distributed import Client

    from cluster.local import local_cluster

    for k in MALLOC:
        os.environ.pop(k, None)
    shipped = yaml.safe_load(YAML_PATH.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    with local_cluster(workers=1, dashboard=False) as cluster, Client(cluster) as client:
        (got,) = client.run(_malloc_env).values()
    assert got == {k: str(shipped[k]) for k in MALLOC}
    assert int(got["MALLOC_MMAP_THRESHOLD_"]) >= 16 * MiB  # a 16 MiB block buffer stays in the heap

    for k in MALLOC:
        os.environ.pop(k, None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}), \
            local_cluster(workers=1, dashboard=False) as cluster, Client(cluster) as client:
        (got,) = client.run(_malloc_env).values()
    assert got["MALLOC_TRIM_THRESHOLD_"] == "65536"


@pytest.mark.parametrize("value", [65536, 99999], ids=["dask's own default", "another value"])
def test_a_users_yaml_overrides_the_shipped_malloc_settings(tmp_path, value):
    """A user's Dask YAML wins over the shipped value, also when it asks for Dask's own default back (which Dask's
    default rules would take for 'not configured'), and still after a dask.config.refresh()."""
    (tmp_path / "mine.yaml").write_text(
        f"distributed:\n  nanny:\n    pre-spawn-environ:\n      MALLOC_TRIM_THRESHOLD_: {value}\n")
    code = ("import dask, pipeline.config\n"
            "key = 'distributed.nanny.pre-spawn-environ'\n"
            "a = dask.config.get(key)\ndask.config.refresh()\nb = dask.config.get(key)\n"
            "print(a['MALLOC_TRIM_THRESHOLD_'], b['MALLOC_TRIM_THRESHOLD_'], a['MALLOC_MMAP_THRESHOLD_'])")
    env = {**os.environ, "DASK_CONFIG": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    shipped = yaml.safe_load(YAML_PATH.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    assert out.split() == [str(value), str(value), str(shipped["MALLOC_MMAP_THRESHOLD_"])]


def _arrow_pool() -> str:
    import pyarrow as pa

    return pa.default_memory_pool().backend_name


def test_worker_processes_use_the_shipped_arrow_pool_and_a_config_chooses_another(monkeypatch):
    """`ARROW_DEFAULT_MEMORY_POOL` in the shipped pre-spawn-environ makes jemalloc the workers' Arrow pool (README,
    Configuration); the same key in a user's config chooses another."""
    from distributed import Client

    from cluster.local import local_cluster

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)  # restored afterwards: a nanny sets it here
    shipped = yaml.safe_load(YAML_PATH.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    assert shipped["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    with local_cluster(workers=1, dashboard=False) as cluster, Client(cluster) as client:
        assert list(client.run(_arrow_pool).values()) == ["jemalloc"]
    os.environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}), \
            local_cluster(workers=1, dashboard=False) as cluster, Client(cluster) as client:
        assert list(client.run(_arrow_pool).values()) == ["mimalloc"]
