"""The proxy benchmark's charts (testbeds/bench/charts.py): each SVG parses as XML, and each bar
is as long as its number says, on the chart's own axis. No process is started."""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import charts  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def run(rps, cpu, p50, p99, p99_9):
    return {
        "fixed": {"requests": 100, "errors": 0, "latency_ms": {"p50": p50, "p99": p99, "p99_9": p99_9, "max": 30.0}},
        "saturating": {"requests": 1000, "errors": 0, "rps": rps, "cpu_us_per_req": cpu, "cpu_cores": 0.9},
    }


def results() -> dict:
    """Three targets at two sizes, in the shape proxies.py writes; grpc-gateway at 100 B also
    carries two runs under `loads`."""
    doc = {
        "meta": {"date": "2026-12-01 02:00:00 UTC", "connections": 32, "rate": 2000.0},
        "results": {
            "switchyard": {"100": run(16103.0, 56.3, 0.597, 1.068, 4.419), "16384": run(11321.0, 81.3, 0.719, 5.4, 9.893)},
            "grpc-gateway": {"100": run(9650.4, 99.2, 0.81, 2.5, 7.25), "16384": run(2875.0, 330.0, 3.1, 21.0, 40.5)},
            "nginx": {"100": run(41265.0, 19.1, 0.282, 0.635, 2.245), "16384": run(29089.0, 29.9, 0.365, 0.722, 3.061)},
        },
    }
    doc["results"]["grpc-gateway"]["100"]["loads"] = [
        {"label": "25 % of saturation", "latency_ms": {"p50": 0.5, "p99": 1.5, "p99_9": 3.5}},
        {"label": "75 % of saturation", "latency_ms": {"p50": 0.9, "p99": 12.0, "p99_9": 60.0}},
    ]
    return doc


def parse(svg: str):
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    bars = [
        (r.get("data-target"), r.get("data-series"), float(r.get("data-value")), float(r.get("width")))
        for r in root.iter(f"{SVG}rect")
        if r.get("class") == "bar"
    ]
    texts = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "value"]
    return root, bars, texts


def expected_fraction(root, value: float) -> float:
    lo, hi = float(root.get("data-axis-min")), float(root.get("data-axis-max"))
    if root.get("data-scale") == "log":
        return math.log(value / lo) / math.log(hi / lo)
    assert lo == 0
    return value / hi


def test_every_chart_is_well_formed_svg_and_its_bars_match_the_numbers():
    doc = results()
    drawn = charts.render(doc)
    assert sorted(drawn) == sorted(
        f"{kind}-{size}.svg" for kind in ("throughput", "cpu", "latency") for size in ("100", "16384")
    )
    for size in ("100", "16384"):
        for kind, key in (("throughput", "rps"), ("cpu", "cpu_us_per_req")):
            root, bars, texts = parse(drawn[f"{kind}-{size}.svg"])
            want = {t: doc["results"][t][size]["saturating"][key] for t in doc["results"]}
            assert [b[0] for b in bars] == list(want), "one bar per target, in the run's order"
            plot_w = float(root.get("data-plot-width"))
            axis_max = float(root.get("data-axis-max"))
            # The axis holds the largest bar and is not needlessly long (at most twice it).
            assert max(want.values()) <= axis_max < 2 * max(want.values())
            for target, _, value, width in bars:
                assert value == want[target]
                assert width == pytest.approx(plot_w * want[target] / axis_max, abs=0.01)
            # Lengths in the same proportions as the numbers, whatever the axis.
            (_, _, _, w_sw), (_, _, _, w_gw), (_, _, _, w_ng) = bars
            assert w_sw / w_ng == pytest.approx(want["switchyard"] / want["nginx"], rel=1e-3)
            assert w_gw / w_sw == pytest.approx(want["grpc-gateway"] / want["switchyard"], rel=1e-3)
            digits = 0 if kind == "throughput" else 1
            assert texts == [f"{want[t]:,.{digits}f}" for t in want]


def test_the_latency_chart_draws_each_percentile_at_each_load_on_a_log_axis():
    doc = results()
    root, bars, texts = parse(charts.render(doc)["latency-100.svg"])
    assert root.get("data-scale") == "log"
    plot_w = float(root.get("data-plot-width"))
    want = []
    for t, by_size in doc["results"].items():
        r = by_size["100"]
        loads = [("2000 req/s", r["fixed"]["latency_ms"])] + [(l["label"], l["latency_ms"]) for l in r.get("loads", [])]
        for label, lat in loads:
            want += [(f"{t} @ {label}", name, lat[key]) for key, name in (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9"))]
    assert [(b[0], b[1], b[2]) for b in bars] == want
    lo, hi = float(root.get("data-axis-min")), float(root.get("data-axis-max"))
    assert lo <= min(v for *_, v in want) and max(v for *_, v in want) <= hi
    for _, _, value, width in bars:
        assert width == pytest.approx(plot_w * expected_fraction(root, value), abs=0.01)
    # p99.9 of grpc-gateway at 75 % (60 ms) against its p50 (0.9 ms): log-proportional lengths.
    by_key = {(b[0], b[1]): b[3] for b in bars}
    k = plot_w / math.log(hi / lo)
    assert by_key[("grpc-gateway @ 75 % of saturation", "p99.9")] - by_key[("grpc-gateway @ 75 % of saturation", "p50")] == (
        pytest.approx(k * math.log(60.0 / 0.9), abs=0.01)
    )
    assert texts == [f"{v:,.3f}" for *_, v in want]


def test_hostile_values_draw_no_bar_and_names_are_escaped():
    doc = results()
    odd = '<script>&"x"'
    doc["results"][odd] = {"100": run(float("nan"), -5.0, "fast", None, True)}
    doc["results"]["switchyard"]["100"]["saturating"]["rps"] = float("inf")
    drawn = charts.render(doc)
    root, bars, _ = parse(drawn["throughput-100.svg"])
    assert [b[0] for b in bars] == ["grpc-gateway", "nginx"]
    _, bars, _ = parse(drawn["latency-100.svg"])
    assert not [b for b in bars if b[0].startswith(odd)]
    assert "<script>" not in drawn["latency-100.svg"]
    with pytest.raises(charts.ChartError):
        charts.render({"results": []})
    with pytest.raises(charts.ChartError):
        charts.render({"results": {"nginx": {"not-a-size": {}}}})


def test_a_chart_past_the_bar_bound_is_refused():
    doc = {"meta": {}, "results": {}}
    for i in range(charts.BARS_MAX + 1):
        doc["results"][f"t{i}"] = {"100": run(1.0 + i, 1.0, 0.1, 0.2, 0.3)}
    with pytest.raises(charts.ChartError, match="bars in one chart"):
        charts.render(doc)


def test_write_charts_writes_the_files(tmp_path: Path):
    src = tmp_path / "results.json"
    import json

    src.write_text(json.dumps(results()))
    written = charts.write_charts(src, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(charts.render(results()))
    for p in written:
        ET.parse(p)
