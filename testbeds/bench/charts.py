"""Charts of the proxy benchmark, drawn from its results.json as plain SVG (no library).

    python3 testbeds/bench/charts.py testbeds/.run/bench/<time>/results.json --out docs/bench

For each body size it writes three horizontal bar charts:

  throughput-<size>.svg   saturating requests per second, one bar per target (linear axis)
  cpu-<size>.svg          the proxy's CPU µs per request, one bar per target (linear axis)
  latency-<size>.svg      p50, p99 and p99.9 per target at each load (logarithmic axis)

The loads of the latency chart are the fixed-rate run of every target (`fixed`), and, when a
target's results carry them, the runs listed under `loads`: each an object with a `label`
(such as "25 % of saturation") and `latency_ms` with `p50`, `p99` and `p99_9`.

Every bar is a `<rect class="bar">` with `data-target`, `data-series` and `data-value` (the
number it draws), and the root `<svg>` carries `data-axis-max` (and `data-axis-min` and
`data-scale`), so that a reader, or the test, can check each bar's length against its number.
proxies.py calls `write_charts` at the end of every run; this command redraws them.

Given the results.json of `tails.sh` (testbeds/bench/tails.py) instead, it writes one chart,
tails-latency.svg: p50, p99 and p99.9 of each target at each share of its own saturation, each
bar the median over the rounds (tails.py draws it at the end of its run too).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr as xml_quoteattr

# Layout, in SVG user units (pixels).
WIDTH = 760
ROW_H = 22  # one bar
GROUP_GAP = 10  # between targets of a grouped chart
TOP = 58  # title, subtitle and legend
BOTTOM = 40  # axis ticks and label
RIGHT = 80  # room for the value written after the longest bar
CHAR_W = 7.0  # an estimate of the width of one character at FONT_SIZE, for the label column
FONT_SIZE = 12
LABELS_MAX = 64  # the longest target name drawn; a longer one is cut
BARS_MAX = 2000  # bars in one chart: a bound on the file a hostile results.json can make

# One colour per family of target, so the peers read apart from Switchyard at a glance.
FAMILY_COLOURS = [
    ("switchyard", "#2f6db5"),
    ("envoy-transcoder", "#d9822b"),
    ("grpc-gateway", "#d9822b"),
    ("direct", "#3f9a5b"),
]
OTHER_COLOUR = "#8c8c8c"
PERCENTILES = [("p50", "p50", "#9cc3e6"), ("p99", "p99", "#2f6db5"), ("p99_9", "p99.9", "#17375e")]


class ChartError(Exception):
    pass


def xml_chars(text: str) -> str:
    """`text` without the characters XML 1.0 cannot hold (control characters, lone surrogates,
    U+FFFE and U+FFFF), which no escaping can represent."""
    return "".join(
        c for c in text
        if c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or "\U00010000" <= c <= "\U0010ffff"
    )


def escape(text: str) -> str:
    return xml_escape(xml_chars(text))


def quoteattr(text: str) -> str:
    return xml_quoteattr(xml_chars(text))


def colour_of(target: str) -> str:
    """Switchyard and its variants in one colour, the HTTP-to-gRPC peers in another."""
    if target == "switchyard" or target.startswith("switchyard-"):
        return FAMILY_COLOURS[0][1]
    return dict(FAMILY_COLOURS).get(target, OTHER_COLOUR)


@dataclass
class Bar:
    group: str  # the row label (a target, or a target at a load)
    series: str  # what the bar measures
    value: float
    colour: str
    text: str  # the number written after the bar


@dataclass
class Axis:
    lo: float  # the value at the left edge (0 on a linear axis)
    hi: float  # the value at the right edge
    log: bool

    def frac(self, v: float) -> float:
        """Where `v` falls between the edges, 0 to 1 (clamped)."""
        if self.log:
            v = max(v, self.lo)
            f = math.log(v / self.lo) / math.log(self.hi / self.lo)
        else:
            f = v / self.hi
        return min(max(f, 0.0), 1.0)

    def ticks(self) -> list[float]:
        if self.log:
            out = []
            decade = 10.0 ** math.floor(math.log10(self.lo))
            while decade <= self.hi and len(out) < 40:
                for m in (1, 2, 5):
                    v = decade * m
                    if self.lo <= v <= self.hi:
                        out.append(v)
                decade *= 10
            return out
        step = nice_step(self.hi / 5)
        return [i * step for i in range(int(self.hi / step + 1e-9) + 1)]


def nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw`."""
    if raw <= 0:
        return 1.0
    p = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * p >= raw:
            return m * p
    return 10 * p


def linear_axis(values: list[float]) -> Axis:
    top = max(values, default=0.0)
    if top <= 0:
        return Axis(0.0, 1.0, False)
    step = nice_step(top / 5)
    return Axis(0.0, step * math.ceil(top / step - 1e-9), False)


def log_axis(values: list[float]) -> Axis:
    # Below 1e-9 (a nanosecond in milliseconds) the decade's power would underflow to 0.
    positive = [v for v in values if v >= 1e-9]
    if not positive:
        return Axis(0.1, 1.0, True)
    lo = 10.0 ** math.floor(math.log10(min(positive)))
    hi = 10.0 ** math.ceil(math.log10(max(positive)))
    if hi <= lo:
        hi = lo * 10
    return Axis(lo, hi, True)


def tick_text(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


def svg_chart(title: str, subtitle: str, unit: str, bars: list[Bar], axis: Axis, legend: list[tuple[str, str]]) -> str:
    """A horizontal bar chart: one row per bar, rows of the same group together."""
    if len(bars) > BARS_MAX:
        raise ChartError(f"{len(bars)} bars in one chart; at most {BARS_MAX}")
    labels = []
    for b in bars:
        if b.group not in labels:
            labels.append(b.group)
    label_w = 16 + CHAR_W * max((len(l[:LABELS_MAX]) for l in labels), default=4)
    plot_x, plot_w = label_w, WIDTH - label_w - RIGHT
    grouped = len(bars) > len(labels)
    height = TOP + len(bars) * ROW_H + (len(labels) - 1) * GROUP_GAP * grouped + BOTTOM
    plot_bottom = height - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="{FONT_SIZE}" '
        f'data-scale="{"log" if axis.log else "linear"}" data-axis-min="{axis.lo:g}" data-axis-max="{axis.hi:g}" '
        f'data-plot-x="{plot_x:g}" data-plot-width="{plot_w:g}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="20" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="38" fill="#555555">{escape(subtitle)}</text>',
    ]
    x = plot_x
    for name, colour in legend:
        out.append(f'<rect x="{x:g}" y="45" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14:g}" y="54">{escape(name)}</text>')
        x += 24 + CHAR_W * len(name)
    for t in axis.ticks():
        tx = plot_x + axis.frac(t) * plot_w
        out.append(f'<line x1="{tx:.2f}" y1="{TOP - 4}" x2="{tx:.2f}" y2="{plot_bottom}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{tx:.2f}" y="{plot_bottom + 15}" text-anchor="middle" fill="#555555">{tick_text(t)}</text>')
    out.append(
        f'<text x="{plot_x + plot_w / 2:g}" y="{plot_bottom + 32}" text-anchor="middle">'
        f"{escape(unit)}{' (logarithmic)' if axis.log else ''}</text>"
    )
    y = TOP
    previous = None
    for b in bars:
        if previous is not None and b.group != previous and grouped:
            y += GROUP_GAP
        if b.group != previous:
            rows = sum(1 for c in bars if c.group == b.group)
            label_y = y + rows * ROW_H / 2 + FONT_SIZE / 3
            out.append(
                f'<text x="{plot_x - 8:g}" y="{label_y:.1f}" text-anchor="end">{escape(b.group[:LABELS_MAX])}</text>'
            )
        previous = b.group
        w = axis.frac(b.value) * plot_w
        out.append(
            f'<rect class="bar" x="{plot_x:g}" y="{y + 3}" width="{w:.3f}" height="{ROW_H - 6}" fill="{b.colour}" '
            f"data-target={quoteattr(b.group)} data-series={quoteattr(b.series)} data-value=\"{b.value!r}\">"
            f"<title>{escape(f'{b.group} {b.series}: {b.text}')}</title></rect>"
        )
        out.append(
            f'<text class="value" x="{plot_x + w + 4:.2f}" y="{y + ROW_H / 2 + FONT_SIZE / 3:.1f}">{escape(b.text)}</text>'
        )
        y += ROW_H
    out.append(f'<line x1="{plot_x:g}" y1="{TOP - 4}" x2="{plot_x:g}" y2="{plot_bottom}" stroke="#333333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# The largest number a bar draws: far above any rate, time or size a run measures, and far
# enough below the float's range that axes and medians built from it cannot overflow.
VALUE_MAX = 1e12


def number(v) -> float | None:
    """A finite number from results.json in [0, VALUE_MAX], or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:  # an int beyond the float's range
        return None
    return v if math.isfinite(v) and 0 <= v <= VALUE_MAX else None


def latency_loads(run: dict, rate) -> list[tuple[str, dict]]:
    """(label, latency_ms) of each load of one target at one size: the fixed-rate run, then
    the runs under `loads`."""
    out = []
    fixed = run.get("fixed")
    if isinstance(fixed, dict) and isinstance(fixed.get("latency_ms"), dict):
        label = f"{number(rate):g} req/s" if number(rate) is not None else "fixed rate"
        out.append((label, fixed["latency_ms"]))
    for load in run.get("loads") or []:
        if isinstance(load, dict) and isinstance(load.get("latency_ms"), dict):
            out.append((str(load.get("label", "load"))[:LABELS_MAX], load["latency_ms"]))
    return out


def charts_for_size(doc: dict, size: str) -> dict[str, str]:
    meta, results = doc.get("meta"), doc["results"]
    meta = meta if isinstance(meta, dict) else {}
    when = str(meta.get("date", "?"))[:LABELS_MAX]
    conns = str(meta.get("connections", "?"))[:LABELS_MAX]
    targets = [t for t in results if isinstance(results[t], dict) and isinstance(results[t].get(size), dict)]
    sat = {t: results[t][size].get("saturating") or {} for t in targets}
    base = f"{size} B bodies, {when}"
    charts = {}

    bars = [
        Bar(t, "req/s", v, colour_of(t), f"{v:,.0f}")
        for t in targets
        if (v := number(sat[t].get("rps"))) is not None
    ]
    charts[f"throughput-{size}.svg"] = svg_chart(
        "Throughput: saturating, closed loop",
        f"{base}; {conns} connections; proxy on one core, one worker",
        "requests per second",
        bars,
        linear_axis([b.value for b in bars]),
        [],
    )

    bars = [
        Bar(t, "cpu_us_per_req", v, colour_of(t), f"{v:,.1f}")
        for t in targets
        if (v := number(sat[t].get("cpu_us_per_req"))) is not None
    ]
    charts[f"cpu-{size}.svg"] = svg_chart(
        "CPU per request of the proxy (lower is better)",
        f"{base}; utime + stime over the saturating run / requests served",
        "CPU µs per request",
        bars,
        linear_axis([b.value for b in bars]),
        [],
    )

    bars = []
    loads_seen = set()
    for t in targets:
        for label, lat in latency_loads(results[t][size], meta.get("rate")):
            loads_seen.add(label)
            for key, name, colour in PERCENTILES:
                v = number(lat.get(key))
                if v is not None:
                    bars.append(Bar(f"{t} @ {label}", name, v, colour, f"{v:,.3f}"))
    charts[f"latency-{size}.svg"] = svg_chart(
        "Latency percentiles at each load (lower is better)",
        f"{base}; open rate over {conns} connections; loads: {', '.join(sorted(loads_seen)) or 'none'}",
        "milliseconds",
        bars,
        log_axis([b.value for b in bars]),
        [(name, colour) for _, name, colour in PERCENTILES],
    )
    return charts


def tails_chart(runs: dict, loads: list[int], subtitle: str) -> str:
    """The tail table as a chart: p50, p99 and p99.9 of each target at each load, each bar the
    median over the rounds (a logarithmic axis: the loads span three decades)."""
    bars = []
    for t, entries in runs.items():
        for load in loads:
            measured = [r for e in entries if isinstance(r := (e.get("loads") or {}).get(str(load)), dict)]
            lats = [lat for r in measured if isinstance(lat := r.get("latency_ms"), dict)]
            for key, name, colour in PERCENTILES:
                values = [v for lat in lats if (v := number(lat.get(key))) is not None]
                if values:
                    med = statistics.median(values)
                    bars.append(Bar(f"{t} @ {load} %", name, med, colour, f"{med:,.3f}"))
    return svg_chart(
        "Open-loop latency at each share of the proxy's own saturation (lower is better)",
        subtitle,
        "milliseconds, from when each request was due",
        bars,
        log_axis([b.value for b in bars]),
        [(name, colour) for _, name, colour in PERCENTILES],
    )


def tails_chart_of(doc: dict) -> str:
    """The tail chart of a results.json that tails.py wrote."""
    meta, runs = doc.get("meta"), doc["results"]["tails"]
    meta = meta if isinstance(meta, dict) else {}
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    loads = args.get("loads") if isinstance(args.get("loads"), list) else [25, 50, 75]
    loads = [x for x in loads if isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 100] or [25, 50, 75]
    runs = {str(t): [e for e in es if isinstance(e, dict) and isinstance(e.get("loads"), dict)]
            for t, es in runs.items() if isinstance(es, list)}
    field = lambda d, k: str(d.get(k, "?"))[:LABELS_MAX]  # noqa: E731  (bounded: the file is not trusted)
    return tails_chart(
        runs, loads,
        f"{field(meta, 'date')}; median of {field(args, 'repeats')} round(s); "
        f"{field(args, 'connections')} connections; {field(args, 'size')} B bodies",
    )


def render(doc) -> dict[str, str]:
    """Every chart of a results.json document: file name -> SVG text."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise ChartError("not a proxy benchmark results.json: no `results` object")
    if isinstance(doc["results"].get("tails"), dict):
        return {"tails-latency.svg": tails_chart_of(doc)}
    sizes = []
    for by_size in doc["results"].values():
        if isinstance(by_size, dict):
            sizes += [s for s in by_size if s not in sizes and s.isdigit() and len(s) <= 9]
    if not sizes:
        raise ChartError("results.json holds no result")
    charts = {}
    for size in sorted(sizes, key=int):
        charts.update(charts_for_size(doc, size))
    return charts


def write_charts(results_json: Path, out_dir: Path) -> list[Path]:
    doc = json.loads(results_json.read_text())
    charts = render(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, svg in charts.items():
        path = out_dir / name
        path.write_text(svg, encoding="utf-8")
        written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a results.json written by proxies.py or tails.py")
    ap.add_argument("--out", type=Path, required=True, help="the folder to write the SVG files to")
    args = ap.parse_args()
    try:
        written = write_charts(args.results, args.out)
    except (OSError, ValueError, ChartError) as e:
        print(f"charts: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
