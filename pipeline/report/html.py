"""The HTML dashboard (`impressions dashboard --out FILE.html`): one self-contained file that opens offline.

Bokeh with its JavaScript inlined (`bokeh.resources.INLINE`, no CDN; about 2 MB). `render_dashboard(data,
out_path)` validates `data`, writes the page atomically and returns the path; `dashboard_html(data)` is the pure
part. The page shows the loads (status, duration, errors; a FAILED load in red, first), rows per file and per
partition (histograms and tables), viewing_percentage mean and stddev per load and per table (the table figures
exactly as `stats` gives them), quarantined rows by reason, and each table's files and bytes over time.

Input (the caller gathers it; every key but ``loads``/``tables`` entries' own keys may be missing)::

    {"generated": "2026-11-26T10:00:00Z",            # ISO time the data was gathered
     "warehouse": "s3://bucket/tables",
     "loads": [                                      # newest first: the objects of `loads --json`
        {"load_id": "partition-…", "stage": "partition", "table": "impressions.fact_partitioned",
         "sources": ["s3://…"], "status": "SUCCEEDED",   # RUNNING SUCCEEDED FAILED SKIPPED ABANDONED
         "started": "2026-11-26T09:58:00Z", "finished": "…" | null, "seconds": 12.3 | null,
         "rows_read": 20, "rows_written": 16, "rows_quarantined": 4, "quarantine": {"bad_date": 1, …},
         "files_written": 8, "bytes_written": 12345, "error": null | "…",
         "vp_mean": 0.15 | null, "vp_std": 0.11 | null, "orphans": 0, …}, …],
     "tables": [
        {"table": "impressions.fact_updated",
         "stats": {the `stats --json` object: table, snapshot_id, rows, files [{path, rows}],
                   vp_mean, vp_std, vp_std_sample, vp_min, vp_max},
         "partitions": [{"ad_date": "2019-01-01", "bucket": 3, "files": 2, "rows": 1234, "bytes": 56789}, …],
         "history": [{"snapshot_id": 1, "timestamp_ms": 1700000000000, "operation": "append",
                      "load_id": "…", "files": 10, "rows": 1000, "bytes": 12345}, …]}, …]}

``history`` gives the table's totals *after* each snapshot (Iceberg's total-data-files, total-records and
total-files-size), oldest first or in any order. Quarantine counts by reason add up the SUCCEEDED loads only (a
failed load commits nothing). The document's data sources carry names (``loads``, ``overall``, ``files``,
``partitions``, ``quarantine``, ``history``, ``vp_loads``, ``load_chart``, and per table ``file_hist:<table>`` and
``partition_hist:<table>``) so tools and
tests can read the figures from the page.
"""
from __future__ import annotations

import html
import math
import os
import tempfile
from collections import Counter
from datetime import datetime, timezone

STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "ABANDONED")
STATUS_COLORS = {"RUNNING": "#1f6feb", "SUCCEEDED": "#1a7f37", "FAILED": "#cf222e", "SKIPPED": "#8c959f",
                 "ABANDONED": "#bf8700"}
LOAD_NUMBERS = ("seconds", "rows_read", "rows_written", "rows_quarantined", "files_written", "bytes_written",
                "vp_mean", "vp_std", "orphans")
STATS_NUMBERS = ("rows", "vp_mean", "vp_std", "vp_std_sample", "vp_min", "vp_max")
CHART_LOADS = 60          # the duration and VP charts show the newest loads; the table shows all
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


# -------------------------------------------------------------------------------------------- validation
class DashboardDataError(ValueError):
    """The data does not follow the schema in this module's docstring (the message names the place)."""


def _check(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise DashboardDataError(f"dashboard data: {where}: {what}")


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _time(v, where: str) -> datetime | None:
    if v is None:
        return None
    _check(isinstance(v, str), where, f"an ISO time or null, got {v!r}")
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise DashboardDataError(f"dashboard data: {where}: not an ISO time: {v!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def validate(data) -> None:
    """Light checks of the shape the page relies on; raises DashboardDataError naming the first problem."""
    _check(isinstance(data, dict), "top level", "a dict")
    _time(data.get("generated"), "generated")
    loads, tables = data.get("loads", []), data.get("tables", [])
    _check(isinstance(loads, list), "loads", "a list")
    _check(isinstance(tables, list), "tables", "a list")
    for i, ld in enumerate(loads):
        w = f"loads[{i}]"
        _check(isinstance(ld, dict), w, "a dict")
        for k in ("load_id", "stage", "table"):
            _check(isinstance(ld.get(k), str), f"{w}.{k}", "a string")
        _check(ld.get("status") in STATUSES, f"{w}.status", f"one of {', '.join(STATUSES)}, got {ld.get('status')!r}")
        for k in LOAD_NUMBERS:
            _check(_is_number(ld.get(k)), f"{w}.{k}", f"a number or null, got {ld.get(k)!r}")
        for k in ("started", "finished"):
            _time(ld.get(k), f"{w}.{k}")
        q = ld.get("quarantine") or {}
        _check(isinstance(q, dict) and all(isinstance(n, int) for n in q.values()), f"{w}.quarantine",
               "a dict of reason -> count")
    for i, t in enumerate(tables):
        w = f"tables[{i}]"
        _check(isinstance(t, dict) and isinstance(t.get("table"), str), w, "a dict with a table name")
        stats = t.get("stats") or {}
        _check(isinstance(stats, dict), f"{w}.stats", "the stats --json object")
        for k in STATS_NUMBERS:
            _check(_is_number(stats.get(k)), f"{w}.stats.{k}", f"a number or null, got {stats.get(k)!r}")
        for j, f in enumerate(stats.get("files") or []):
            _check(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("rows"), int),
                   f"{w}.stats.files[{j}]", "{path, rows}")
        for j, p in enumerate(t.get("partitions") or []):
            _check(isinstance(p, dict) and all(_is_number(p.get(k)) for k in ("files", "rows", "bytes")),
                   f"{w}.partitions[{j}]", "{ad_date, bucket, files, rows, bytes}")
        for j, h in enumerate(t.get("history") or []):
            _check(isinstance(h, dict) and isinstance(h.get("timestamp_ms"), int), f"{w}.history[{j}]",
                   "{timestamp_ms, files, rows, bytes, …}")


# --------------------------------------------------------------------------------------------- columns
def _duration(ld: dict, generated: datetime | None) -> float | None:
    if ld.get("seconds") is not None:
        return float(ld["seconds"])
    start, end = _time(ld.get("started"), "started"), _time(ld.get("finished"), "finished")
    end = end or (generated if ld.get("status") == "RUNNING" else None)
    return (end - start).total_seconds() if start and end else None


def _labels(loads: list[dict]) -> list[str]:
    """Unique, readable load labels: '#n stage → table' with n counted from the oldest load (1)."""
    n = len(loads)
    return [f"#{n - i} {ld['stage']} → {ld['table'].split('.')[-1]}" for i, ld in enumerate(loads)]


def load_columns(data: dict) -> dict:
    """The loads as table columns, newest first (what the ``loads`` source holds)."""
    loads = data.get("loads", [])
    generated = _time(data.get("generated"), "generated")
    cols = {"label": _labels(loads), "load_id": [], "stage": [], "table": [], "status": [], "color": [],
            "started": [], "finished": [], "duration": [], "error": [], "quarantine": [], "sources": []}
    for k in LOAD_NUMBERS:
        cols.setdefault(k, [])
    for ld in loads:
        for k in ("load_id", "stage", "table", "status"):
            cols[k].append(ld[k])
        cols["color"].append(STATUS_COLORS[ld["status"]])
        cols["started"].append(ld.get("started") or "")
        cols["finished"].append(ld.get("finished") or "")
        cols["duration"].append(_duration(ld, generated))
        cols["error"].append(ld.get("error") or "")
        cols["quarantine"].append(", ".join(f"{r} {n}" for r, n in sorted((ld.get("quarantine") or {}).items())))
        cols["sources"].append(", ".join(map(str, ld.get("sources") or [])))
        for k in LOAD_NUMBERS:
            cols[k].append(ld.get(k))
    return cols


def quarantine_columns(loads: list[dict]) -> dict:
    total: Counter = Counter()
    for ld in loads:
        if ld["status"] == "SUCCEEDED":
            total.update(ld.get("quarantine") or {})
    reasons = sorted(total, key=lambda r: (-total[r], r))
    return {"reason": reasons, "rows": [total[r] for r in reasons]}


def overall_columns(tables: list[dict]) -> dict:
    """Each table's `stats` figures, exactly as given."""
    cols: dict = {"table": [], "snapshot_id": [], "files": []}
    for k in STATS_NUMBERS:
        cols[k] = []
    for t in tables:
        s = t.get("stats") or {}
        cols["table"].append(t["table"])
        cols["snapshot_id"].append(str(s.get("snapshot_id", "")))
        cols["files"].append(len(s.get("files") or []))
        for k in STATS_NUMBERS:
            cols[k].append(s.get(k))
    for k in STATS_NUMBERS[1:]:  # shown as `stats --json` prints them: every digit
        cols[f"{k}_text"] = [_fmt(v) for v in cols[k]]
    return cols


def histogram(values: list[int], bins: int = 20) -> dict:
    """Equal-width bins over [min, max] (one bin when all values are equal): left, right, count."""
    if not values:
        return {"left": [], "right": [], "count": []}
    lo, hi = min(values), max(values)
    if lo == hi:
        return {"left": [lo - 0.5], "right": [hi + 0.5], "count": [len(values)]}
    bins = max(1, min(bins, len(values)))
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return {"left": [lo + i * width for i in range(bins)], "right": [lo + (i + 1) * width for i in range(bins)],
            "count": counts}


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return f"{v:,}" if isinstance(v, int) else str(v)


# ------------------------------------------------------------------------------------------------- page
def dashboard_html(data: dict) -> str:
    """The whole page as one HTML string (pure: the same data gives the same figures)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    validate(data)
    title = "impressions dashboard"
    return file_html(_layout(data), resources=INLINE, title=title)


def render_dashboard(data: dict, out_path: str) -> str:
    """Write the dashboard to `out_path` (atomically: a reader never sees half a file); returns the path."""
    page = dashboard_html(data)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dashboard-", suffix=".html", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # mkstemp's 0600 would hide the page from other users
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out_path


def _layout(data: dict):
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div

    loads, tables = data.get("loads", []), data.get("tables", [])
    lc = load_columns(data)
    src_loads = ColumnDataSource(lc, name="loads")
    statuses = Counter(ld["status"] for ld in loads)
    esc = html.escape

    parts = [Div(name="summary", text=(
        f"<h1 style='margin:0'>impressions dashboard</h1><p>generated {esc(str(data.get('generated') or '?'))}"
        f" · warehouse <code>{esc(str(data.get('warehouse') or '?'))}</code> · {len(loads)} load(s): "
        + (", ".join(f"<b style='color:{STATUS_COLORS[s]}'>{statuses[s]} {s}</b>" for s in STATUSES
                     if statuses[s]) or "none") + "</p>"))]
    failed = [ld for ld in loads if ld["status"] == "FAILED"]
    parts.append(Div(name="failed", styles={"color": STATUS_COLORS["FAILED"]} if failed else {}, text=(
        f"<h2 style='margin:0'>{len(failed)} failed load(s)</h2><ul>" + "".join(
            f"<li><b>{esc(ld['stage'])} → {esc(ld['table'])}</b> ({esc(ld['load_id'])}, started "
            f"{esc(str(ld.get('started') or '?'))}): {esc(str(ld.get('error') or 'no error message'))}</li>"
            for ld in failed) + "</ul>") if failed else "<p>No failed loads.</p>"))

    def nothing(what):
        return Div(text=f"<p><i>{what}</i></p>")

    parts += [Div(text="<h2>Loads</h2>"), _duration_chart(lc) if loads else nothing("No loads recorded yet."),
              _loads_table(src_loads)]
    parts += [Div(text="<h2>viewing_percentage</h2><p>Per load: mean ± stddev (population) of the rows the "
                       "load wrote. Per table: the <code>stats</code> figures, exact.</p>"),
              _vp_chart(lc) if any(m is not None for m in lc["vp_mean"][:CHART_LOADS])
              else nothing("No load has viewing_percentage figures yet."), _overall_table(tables)]
    quarantine = quarantine_columns(loads)
    parts += [Div(text="<h2>Quarantined rows by reason</h2>"),
              _quarantine_chart(quarantine) if quarantine["reason"] else nothing("No quarantined rows.")]
    parts += [Div(text="<h2>Rows per file and per partition</h2>")]
    file_rows, part_rows = _file_and_partition_sources(tables)
    for t in tables:
        hists = [_histogram_figure(t, kind) for kind in ("file", "partition")]
        parts.append(row(*[h for h in hists if h is not None], sizing_mode="stretch_width") if any(hists)
                     else nothing(f"{t['table']}: no data files."))
    parts += [_files_table(file_rows), _partitions_table(part_rows)]
    if any(t.get("history") for t in tables):
        figs, table = _history_figures(tables)
        parts += [Div(text="<h2>Files and bytes over time</h2>"), row(*figs, sizing_mode="stretch_width"), table]
    return column(*parts, sizing_mode="stretch_width")


def _duration_chart(lc: dict):
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    n = min(CHART_LOADS, len(lc["label"]))
    cols = {k: list(reversed(v[:n])) for k, v in lc.items()}          # oldest at the bottom
    cols["duration_bar"] = [d or 0.0 for d in cols["duration"]]
    src = ColumnDataSource(cols, name="load_chart")
    p = figure(name="load_durations", y_range=cols["label"], height=max(160, 22 * n + 60),
               title="Duration of each load (s), colored by status", sizing_mode="stretch_width",
               tools="hover,save", tooltips=[("load", "@load_id"), ("status", "@status"), ("seconds", "@duration"),
                                             ("rows written", "@rows_written"), ("error", "@error")])
    p.hbar(y="label", right="duration_bar", height=0.7, color="color", source=src)
    p.x_range.start = 0
    return p


def _loads_table(src):
    from bokeh.models import DataTable, NumberFormatter, StringFormatter, TableColumn

    ints, vp = NumberFormatter(format="0,0", null_format="", nan_format=""), \
        NumberFormatter(format="0.000000", null_format="", nan_format="")
    status = StringFormatter(text_color="color", font_style="bold")
    error = StringFormatter(text_color=STATUS_COLORS["FAILED"])
    cols = [TableColumn(field="label", title="load", width=200), TableColumn(field="status", title="status",
                                                                             formatter=status, width=90),
            TableColumn(field="started", title="started", width=160),
            TableColumn(field="duration", title="seconds", formatter=NumberFormatter(format="0.0", null_format=""),
                        width=70)]
    cols += [TableColumn(field=k, title=k.replace("_", " "), formatter=ints, width=90)
             for k in ("rows_read", "rows_written", "rows_quarantined", "files_written", "bytes_written", "orphans")]
    cols += [TableColumn(field=k, title=k, formatter=vp, width=80) for k in ("vp_mean", "vp_std")]
    cols += [TableColumn(field="quarantine", title="quarantine", width=160),
             TableColumn(field="error", title="error", formatter=error, width=300),
             TableColumn(field="load_id", title="load id", width=200)]
    return DataTable(reorderable=False, name="loads_table", source=src, columns=cols, index_position=None,
                     height=min(600, 28 * (len(src.data["label"]) + 1) + 10), sizing_mode="stretch_width")


def _vp_chart(lc: dict):
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    idx = [i for i, m in enumerate(lc["vp_mean"][:CHART_LOADS]) if m is not None][::-1]
    cols = {k: [lc[k][i] for i in idx] for k in ("label", "load_id", "table", "status", "vp_mean", "vp_std")}
    cols["lower"] = [m - (s or 0) for m, s in zip(cols["vp_mean"], cols["vp_std"])]
    cols["upper"] = [m + (s or 0) for m, s in zip(cols["vp_mean"], cols["vp_std"])]
    src = ColumnDataSource(cols, name="vp_loads")
    p = figure(name="vp_per_load", x_range=cols["label"], height=320,
               title="viewing_percentage per load: mean ± stddev", sizing_mode="stretch_width", tools="hover,save",
               tooltips=[("load", "@load_id"), ("mean", "@vp_mean{0.000000}"), ("stddev", "@vp_std{0.000000}")])
    p.segment(x0="label", y0="lower", x1="label", y1="upper", line_width=2, source=src)   # ranges include it
    p.scatter(x="label", y="vp_mean", size=9, source=src)
    p.xaxis.major_label_orientation = 0.8
    return p


def _overall_table(tables: list[dict]):
    from bokeh.models import ColumnDataSource, DataTable, NumberFormatter, TableColumn

    src = ColumnDataSource(overall_columns(tables), name="overall")
    cols = [TableColumn(field="table", title="table", width=220), TableColumn(field="snapshot_id", title="snapshot"),
            TableColumn(field="rows", title="rows", formatter=NumberFormatter(format="0,0")),
            TableColumn(field="files", title="files", formatter=NumberFormatter(format="0,0"))]
    cols += [TableColumn(field=f"{k}_text", title=k) for k in STATS_NUMBERS[1:]]
    return DataTable(reorderable=False, name="overall_table", source=src, columns=cols, index_position=None,
                     height=28 * (len(tables) + 1) + 10, sizing_mode="stretch_width")


def _quarantine_chart(cols: dict):
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    src = ColumnDataSource(cols, name="quarantine")
    p = figure(name="quarantine_chart", x_range=cols["reason"], height=260, tools="hover,save",
               title="Quarantined rows by reason (succeeded loads)", tooltips=[("reason", "@reason"), ("rows", "@rows")],
               sizing_mode="stretch_width")
    p.vbar(x="reason", top="rows", width=0.7, color=STATUS_COLORS["ABANDONED"], source=src)
    p.y_range.start = 0
    return p


def _file_and_partition_sources(tables: list[dict]):
    from bokeh.models import ColumnDataSource

    files = {"table": [], "path": [], "rows": []}
    parts = {"table": [], "ad_date": [], "bucket": [], "files": [], "rows": [], "bytes": []}
    for t in tables:
        for f in (t.get("stats") or {}).get("files") or []:
            files["table"].append(t["table"]), files["path"].append(f["path"]), files["rows"].append(f["rows"])
        for p in t.get("partitions") or []:
            parts["table"].append(t["table"])
            parts["ad_date"].append(str(p.get("ad_date")))
            parts["bucket"].append(p.get("bucket"))
            for k in ("files", "rows", "bytes"):
                parts[k].append(p.get(k))
    return ColumnDataSource(files, name="files"), ColumnDataSource(parts, name="partitions")


def _histogram_figure(table: dict, kind: str):
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    if kind == "file":
        values = [f["rows"] for f in (table.get("stats") or {}).get("files") or []]
    else:
        values = [p["rows"] for p in table.get("partitions") or [] if p.get("rows") is not None]
    if not values:
        return None
    src = ColumnDataSource({**histogram(values), "table": [table["table"]] * len(histogram(values)["count"])},
                           name=f"{kind}_hist:{table['table']}")
    p = figure(name=f"{kind}_hist_figure", height=260, sizing_mode="stretch_width", tools="hover,save",
               title=f"{table['table']}: rows per {kind} ({len(values)} {kind}s)",
               tooltips=[("rows", "@left{0,0} – @right{0,0}"), (f"{kind}s", "@count")])
    p.quad(left="left", right="right", bottom=0, top="count", source=src, line_color="white")
    p.xaxis.axis_label, p.yaxis.axis_label = f"rows per {kind}", f"{kind}s"
    return p


def _files_table(src):
    from bokeh.models import DataTable, NumberFormatter, TableColumn

    return DataTable(reorderable=False, name="files_table", source=src, index_position=None, height=300, sizing_mode="stretch_width",
                     columns=[TableColumn(field="table", title="table", width=160),
                              TableColumn(field="path", title="file", width=420),
                              TableColumn(field="rows", title="rows", formatter=NumberFormatter(format="0,0"))])


def _partitions_table(src):
    from bokeh.models import DataTable, NumberFormatter, TableColumn

    n = NumberFormatter(format="0,0", null_format="")
    return DataTable(reorderable=False, name="partitions_table", source=src, index_position=None, height=300,
                     sizing_mode="stretch_width",
                     columns=[TableColumn(field="table", title="table"), TableColumn(field="ad_date", title="ad_date"),
                              TableColumn(field="bucket", title="bucket"),
                              TableColumn(field="files", title="files", formatter=n),
                              TableColumn(field="rows", title="rows", formatter=n),
                              TableColumn(field="bytes", title="bytes", formatter=n)])


def _history_figures(tables: list[dict]):
    from bokeh.models import ColumnDataSource, DataTable, DateFormatter, NumberFormatter, TableColumn
    from bokeh.plotting import figure

    all_cols = {"table": [], "time": [], "snapshot_id": [], "operation": [], "load_id": [], "files": [], "rows": [],
                "bytes": []}
    figs = {k: figure(name=f"{k}_over_time", x_axis_type="datetime", height=300, sizing_mode="stretch_width",
                      title=f"{k} per table over time", tools="hover,save,pan,wheel_zoom,reset",
                      tooltips=[("table", "@table"), ("operation", "@operation"), (k, f"@{k}{{0,0}}")])
            for k in ("files", "bytes")}
    for i, t in enumerate(tables):
        hist = sorted(t.get("history") or [], key=lambda h: h["timestamp_ms"])
        cols = {"table": [t["table"]] * len(hist), "time": [float(h["timestamp_ms"]) for h in hist],
                "snapshot_id": [str(h.get("snapshot_id", "")) for h in hist],
                "operation": [str(h.get("operation") or "") for h in hist],
                "load_id": [str(h.get("load_id") or "") for h in hist],
                **{k: [h.get(k) for h in hist] for k in ("files", "rows", "bytes")}}
        for k, v in cols.items():
            all_cols[k] += v
        src = ColumnDataSource(cols, tags=[t["table"]])
        color = PALETTE[i % len(PALETTE)]
        for k, fig in figs.items():
            fig.step(x="time", y=k, source=src, mode="after", color=color, legend_label=t["table"], line_width=2)
            fig.scatter(x="time", y=k, source=src, color=color, size=6)
    history = ColumnDataSource(all_cols, name="history")
    for fig in figs.values():
        fig.legend.location = "top_left"
    n = NumberFormatter(format="0,0", null_format="")
    table = DataTable(reorderable=False, name="history_table", source=history, index_position=None, height=260,
                      sizing_mode="stretch_width",
                      columns=[TableColumn(field="table", title="table"), TableColumn(field="snapshot_id", title="snapshot"),
                               TableColumn(field="time", title="committed", formatter=DateFormatter(format="%Y-%m-%d %H:%M:%S")),
                               TableColumn(field="operation", title="operation"), TableColumn(field="load_id", title="load"),
                               TableColumn(field="files", title="files", formatter=n),
                               TableColumn(field="rows", title="rows", formatter=n),
                               TableColumn(field="bytes", title="bytes", formatter=n)])
    return list(figs.values()), table
