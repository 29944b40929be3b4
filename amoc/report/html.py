"""The report directory: index.html (offline, ECharts plots inlined), series.csv, summary.json.

The page carries its data as JSON and the pinned Apache ECharts (amoc.report.echarts) in
the page itself: time axes, tooltips, zoom, a line per node for a cluster's run, markers
for do / add / remove / rate changes, the distributions of the run's latency histograms.
After drawing, each chart's element lists the series it drew in `data-series` and the body
counts the charts in `data-charts` (what a headless browser checks).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from amoc.metrics.prometheus import bucket_counts
from amoc.metrics.promnames import TIME_BUCKETS
from amoc.report import echarts
from amoc.report.figures import COLUMNS, FEATURE_HISTOGRAMS, FEATURE_RATES

log = logging.getLogger("amoc.report")

# (title, unit, total series (column, label), per-node series (column, label prefix)).
CHARTS = (
    ("Users", "users", (("running", "running"), ("target", "target"), ("failed", "failed runs")),
     (("running", "running"),)),
    ("Rates", "per second", (("logins_s", "logins/s"), ("messages_s", "messages/s")),
     (("messages_s", "messages/s"),)),
    ("Time to delivery", "ms", (("ttd_p50", "TTD p50"), ("ttd_p99", "TTD p99")),
     (("ttd_p99", "TTD p99"),)),
    ("Errors (cumulative)", "errors", (("errors", "errors"),), (("errors", "errors"),)),
)  # fmt: skip
# The load generator's own health (amoc.health), after the servers' charts.
HEALTH_CHARTS = (
    ("Load generator: CPU", "% of one core", (("cpu", "amoc CPU"),
     ("loop_busy", "event loop running or waiting for a CPU")), (("cpu", "CPU"),)),
    ("Load generator: event-loop lag", "ms", (("lag_p99", "loop lag p99"),
     ("lag_max", "loop lag max")), (("lag_p99", "lag p99"),)),
)  # fmt: skip
# The columns kept per node (the rest are the cluster's only).
NODE_COLUMNS = (
    "running", "logins_s", "messages_s", "ttd_p99", "errors", "cpu", "lag_p99", "clock_ms",
)  # fmt: skip
# A cluster's run only: each slave's clock offset to the master (corrected in its TTDs).
CLOCK_CHART = ("Clock offset to the master (corrected)", "ms", (), (("clock_ms", "clock"),))
# A server chart: (title, unit, [(column, legend)]), from amoc.monitor's `charts()`.
ServerChart = tuple[str, str, Sequence[tuple[str, str]]]
_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("amoc-data").textContent);
  var drawn = 0;
  // The time axes reach every marker (a run's "do" comes a moment before its first sample).
  var at = data.markers.map(function (m) { return m.at; });
  var lo = Math.min.apply(null, at.concat([Infinity]));
  var hi = Math.max.apply(null, at.concat([-Infinity]));
  function marks(markers) {
    return {symbol: "none", silent: false, animation: false,
      label: {formatter: "{b}", position: "insideEndTop", fontSize: 10},
      lineStyle: {type: "dashed", color: "#888"},
      data: markers.map(function (m) { return {name: m.text, xAxis: m.at}; })};
  }
  function options(c) {
    var rows = Math.ceil(c.series.length / 4);
    var series = c.series.map(function (s, i) {
      var line = {name: s.name, type: c.kind, data: s.data, showSymbol: false,
        connectNulls: false, emphasis: {focus: "series"}};
      if (c.kind === "line" && i === 0 && data.markers.length) {
        line.markLine = marks(data.markers);
      }
      return line;
    });
    var x = c.kind === "line" ? {type: "time", min: function (v) { return Math.min(v.min, lo); },
      max: function (v) { return Math.max(v.max, hi); }} : {type: "category",
      data: c.categories, name: "at or below", axisLabel: {interval: 0, rotate: 40}};
    return {animation: false, title: {text: c.title, left: 8},
      tooltip: {trigger: "axis", valueFormatter: function (v) {
        return v === null || v === undefined ? "-" : (+v).toPrecision(4) + " " + c.unit; }},
      legend: {type: "plain", top: 26, left: 8, right: 90},
      toolbox: {right: 8, feature: {dataZoom: {yAxisIndex: "none"}, restore: {},
        saveAsImage: {}}},
      grid: {top: 40 + 22 * rows, left: 60, right: 30, bottom: 70},
      xAxis: x, yAxis: {type: "value", name: c.unit, nameLocation: "middle", nameGap: 44},
      dataZoom: [{type: "inside"}, {type: "slider", bottom: 10}], series: series};
  }
  if (typeof echarts === "undefined") { return; }
  data.charts.forEach(function (c, i) {
    var el = document.getElementById("chart-" + i);
    var chart = echarts.init(el, null, {renderer: "svg"});
    chart.setOption(options(c));
    el.setAttribute("data-series", JSON.stringify(
      chart.getOption().series.map(function (s) { return s.name; })));
    drawn += 1;
  });
  document.body.setAttribute("data-charts", String(drawn));
  window.addEventListener("resize", function () {
    data.charts.forEach(function (c, i) {
      echarts.getInstanceByDom(document.getElementById("chart-" + i)).resize();
    });
  });
})();
"""


def _value(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 4)


def _line(
    started: float, rows: Sequence[Mapping[str, float]], column: str, name: str
) -> dict[str, Any]:
    """One series: [epoch ms, value or null] a row."""
    data = [[round((started + r["t"]) * 1000), _value(r.get(column, math.nan))] for r in rows]
    return {"name": name, "data": data}


def line_charts(
    started: float,
    rows: Sequence[Mapping[str, float]],
    nodes: Mapping[str, Sequence[Mapping[str, float]]],
    extra: Sequence[str],
    servers: Sequence[ServerChart] = (),
) -> list[dict[str, Any]]:
    """The time charts: the run's totals with a line per node, the monitored servers under
    them, the load generator's health, the feature figures."""
    out = []

    def client(charts: Sequence[Any]) -> None:
        for title, unit, series, per_node in charts:
            lines = [_line(started, rows, c, label) for c, label in series]
            lines += [
                _line(started, node_rows, c, f"{label} {node}")
                for c, label in per_node
                for node, node_rows in sorted(nodes.items())
            ]
            out.append({"title": title, "unit": unit, "kind": "line", "series": lines})

    client(CHARTS)
    for title, unit, columns in servers:
        lines = [_line(started, rows, c, label) for c, label in columns]
        out.append({"title": title, "unit": unit, "kind": "line", "series": lines})
    client(HEALTH_CHARTS)
    if nodes:
        client([CLOCK_CHART])
    for title, columns in feature_charts(extra):
        unit = "per second" if "rates" in title else "ms"
        lines = [_line(started, rows, c, label) for c, label in columns]
        out.append({"title": title, "unit": unit, "kind": "line", "series": lines})
    return out


def distribution_chart(histograms: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The run's latency histograms (`*_ms`) as shares of their values per bucket."""
    bars = []
    for name, hist in sorted(histograms.items()):
        # The load generator's own (node.loop_lag_ms) has its chart over time.
        if not name.endswith("_ms") or not hist.get("count") or name.startswith("node."):
            continue
        cumulative = bucket_counts(hist, TIME_BUCKETS, 0.001)
        counts = [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]
        bars.append({"name": name, "data": [round(100 * n / hist["count"], 3) for n in counts]})
    if not bars:
        return None
    labels = [f"{b * 1000:g} ms" for b in TIME_BUCKETS] + ["more"]
    return {"title": "Latency distributions over the run", "unit": "% of values",
            "kind": "bar", "categories": labels, "series": bars}  # fmt: skip


def _script_tag() -> str:
    """ECharts inlined, or a notice of why the plots are missing (the data is still there)."""
    try:
        code = echarts.script().decode("utf-8")
    except echarts.ChartsMissing as exc:
        log.error("the report has no plots: %s", exc)
        return f'<p class="missing">No plots: {html.escape(str(exc))}</p>'
    # A script element ends at the first "</script": the library never has one, but say so.
    return "<script>" + code.replace("</script", "<\\/script") + "</script>"


def write(
    directory: Path,
    rows: Sequence[dict[str, float]],
    info: dict[str, Any],
    parameters: Sequence[tuple[str, Any, str, str]],
    summary: dict[str, Any],
    *,
    nodes: Mapping[str, Sequence[dict[str, float]]] | None = None,
    markers: Sequence[Mapping[str, Any]] = (),
    histograms: Mapping[str, Mapping[str, Any]] | None = None,
    servers: Sequence[ServerChart] = (),
    monitored: Mapping[str, Mapping[str, Any]] | None = None,
    client_bound: str | None = None,
) -> Path:
    """Write the report, readable by its owner only (0600 files, 0700 directory).

    The path of index.html. `parameters` are shown as given: pass Config.describe()'s rows,
    in which secrets are already ***. `nodes`: each node's rows (NODE_COLUMNS), `markers`:
    {"t": s since the start, "text": ...}, `histograms`: the run's histogram snapshots,
    `servers`: the monitored servers' charts (their columns are in `rows`), `monitored`:
    per source {"what": ..., "samples": n, "status": ...} ("no data" when it gave none),
    `client_bound`: the verdict line when a load node was saturated."""
    private_dir(directory)
    columns = ["t", *(c for c, _ in COLUMNS)]
    extra = sorted({k for r in rows for k in r} - set(columns))
    columns += extra
    table = io.StringIO(newline="")
    out = csv.writer(table)
    out.writerow(columns)
    for r in rows:
        out.writerow([_cell(r.get(c, math.nan)) for c in columns])
    private_write(directory / "series.csv", table.getvalue())
    extra = [c for c in extra if not c.startswith("mon.")]
    doc = {"run": info, "metrics": summary, "client_bound": client_bound,
           "monitored": dict(monitored or {})}  # fmt: skip
    private_write(directory / "summary.json", json.dumps(doc, indent=2, default=str) + "\n")
    started = float(info.get("started") or 0.0)
    charts = line_charts(started, rows, nodes or {}, extra, servers)
    dist = distribution_chart(histograms or {})
    if dist is not None:
        charts.append(dist)
    data = {
        "charts": charts,
        "markers": [
            {"at": round((started + m["t"]) * 1000), "text": str(m["text"])}
            for m in sorted(markers, key=lambda m: float(m["t"]))
        ],
    }
    page = _page(info, len(rows), parameters, summary, charts, data,
                 _notes(monitored or {}, client_bound))  # fmt: skip
    index = directory / "index.html"
    private_write(index, page)
    return index


def _page(
    info: Mapping[str, Any],
    samples: int,
    parameters: Sequence[tuple[str, Any, str, str]],
    summary: Mapping[str, Any],
    charts: Sequence[Mapping[str, Any]],
    data: Mapping[str, Any],
    notes: str = "",
) -> str:
    params = "\n".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(repr(v))}</td>"
        f"<td>{html.escape(s)}</td><td>{html.escape(d)}</td></tr>"
        for n, v, s, d in parameters
    )
    figures = "\n".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(_figure(v))}</td></tr>"
        for n, v in sorted(summary.items())
    )
    boxes = "\n".join(
        f'<h3>{html.escape(c["title"])}</h3><div class="chart" id="chart-{i}" '
        f'data-title="{html.escape(c["title"])}"></div>'
        for i, c in enumerate(charts)
    )
    # JSON in a script element: "<" escaped, so that no "</script" can end it early.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    markers = "".join(
        f"<li>{time.strftime('%H:%M:%S', time.localtime(m['at'] / 1000))} "
        f"{html.escape(m['text'])}</li>"
        for m in data["markers"]
    )
    scenario = html.escape(str(info.get("scenario")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>amoc report: {scenario}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 13px; }}
.chart {{ width: 100%; max-width: 1100px; height: 380px; margin: 0 0 1.5em; }}
h3 {{ display: none; }}
.missing, .bound {{ color: #b00; font-weight: bold; }}
</style></head><body>
<h1>amoc report: {scenario}</h1>
<p>Comment: <b>{html.escape(str(info.get("comment") or "-"))}</b></p>
<p>Started {started}, lasted {info.get("duration_s", 0):.0f} s, {samples} samples;
node {html.escape(str(info.get("node")))}. Raw series: <a href="series.csv">series.csv</a>,
figures: <a href="summary.json">summary.json</a>. Drag or scroll on a plot to zoom.</p>
{notes}
<h2>Plots</h2>
<ul class="markers">{markers}</ul>
{boxes}
<script type="application/json" id="amoc-data">{payload}</script>
{_script_tag()}
<script>{_SCRIPT}</script>
<h2>Figures at the end</h2>
<table><tr><th>metric</th><th>value</th></tr>
{figures}
</table>
<h2>Parameters</h2>
<table><tr><th>name</th><th>value</th><th>source</th><th>description</th></tr>
{params}
</table>
</body></html>
"""


def _notes(monitored: Mapping[str, Mapping[str, Any]], client_bound: str | None) -> str:
    """The client-bound verdict and the table of monitored servers (no data marked)."""
    out = ""
    if client_bound:
        out += f'<p class="bound" id="client-bound">{html.escape(client_bound)}</p>\n'
    if monitored:
        lines = "\n".join(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(m.get('what', '')))}</td>"
            f"<td>{int(m.get('samples', 0))}</td><td>{html.escape(str(m.get('status', '')))}"
            "</td></tr>"
            for label, m in sorted(monitored.items())
        )
        out += (
            '<h2>Servers under test</h2>\n<table class="monitored"><tr><th>host</th>'
            f"<th>source</th><th>samples</th><th>status</th></tr>\n{lines}\n</table>\n"
        )
    return out


def private_dir(directory: Path) -> None:
    """Make `directory` (and missing parents) with mode 0700; an existing one is narrowed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def private_write(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 (an existing file is narrowed, never followed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def feature_charts(columns: Sequence[str]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Charts for the feature figures a run recorded (groupchat, pubsub, MAM, SM, IQ)."""
    present = set(columns)
    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    latency = tuple(
        (f"{prefix}_{q}", f"{title} {q}")
        for _name, prefix, title in FEATURE_HISTOGRAMS
        for q in ("p50", "p99")
        if f"{prefix}_{q}" in present
    )
    if latency:
        out.append(("Feature latency (ms)", latency))
    rates = tuple((c, title) for c, title, _n in FEATURE_RATES if c in present)
    if rates:
        out.append(("Feature rates (per second)", rates))
    iqs = tuple((c, c[3:-4]) for c in sorted(present) if c.startswith("iq_") and c.endswith("_p99"))
    if iqs:
        out.append(("IQ response time p99 (ms)", iqs))
    return out


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def _figure(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
        )
    return str(value)
