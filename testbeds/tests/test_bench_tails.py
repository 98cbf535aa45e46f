"""The tails benchmark's reports (testbeds/bench/tails.py): its tail chart (drawn by
charts.py) gives the median of the rounds at each load, and its parallel table pairs each
one-core phase with the two-core phase of the same pair. No process is started but this one's
threads, moved between cores and back."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import charts  # noqa: E402
import tails  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def entry(rnd: int, p99s: dict[int, float | None]) -> dict:
    """One round of one target, in the shape tails() writes: a p99 per load (None: a run that
    measured nothing, whose percentiles are absent)."""
    loads = {}
    for load, p99 in p99s.items():
        lat = {} if p99 is None else {"p50": p99 / 4, "p99": p99, "p99_9": p99 * 2}
        loads[str(load)] = {"rate": 1000.0 * load, "requests": 10, "errors": 0, "unanswered": 0, "latency_ms": lat}
    return {"round": rnd, "saturation_rps": 4000.0, "loads": loads}


def bars(svg: str) -> list[tuple[str, str, float]]:
    root = ET.fromstring(svg)
    return [
        (r.get("data-target"), r.get("data-series"), float(r.get("data-value")))
        for r in root.iter(f"{SVG}rect")
        if r.get("class") == "bar"
    ]


def test_the_tail_chart_draws_the_median_of_the_rounds_at_each_load():
    runs = {
        "switchyard": [entry(1, {25: 1.0, 75: 30.0}), entry(2, {25: 5.0, 75: 60.0}), entry(3, {25: 2.0, 75: 10.0})],
        # A round whose run measured nothing counts for nothing; the median is of the others.
        "nginx": [entry(1, {25: 0.5, 75: None}), entry(2, {25: 0.7, 75: 400.0}), entry(3, {25: 0.6, 75: 500.0})],
    }
    drawn = bars(charts.tails_chart(runs, [25, 75], "test"))
    p99 = {t: v for t, s, v in drawn if s == "p99"}
    assert p99 == {
        "switchyard @ 25 %": 2.0, "switchyard @ 75 %": 30.0, "nginx @ 25 %": 0.6, "nginx @ 75 %": 450.0,
    }
    # Three percentiles per target and load, in the table's order.
    assert [(t, s) for t, s, _ in drawn][:3] == [("switchyard @ 25 %", "p50"), ("switchyard @ 25 %", "p99"),
                                                  ("switchyard @ 25 %", "p99.9")]
    assert len(drawn) == 12
    p999 = {t: v for t, s, v in drawn if s == "p99.9"}
    assert p999["nginx @ 75 %"] == 900.0


def test_charts_py_draws_the_tail_chart_from_a_tails_results_json_and_survives_hostile_values():
    runs = {"switchyard": [entry(1, {25: 1.0, 50: 2.0}), entry(2, {25: 3.0, 50: 4.0})]}
    doc = {"meta": {"date": "d", "args": {"loads": [25, 50], "repeats": 2, "connections": 32, "size": 100}},
           "results": {"tails": runs, "scaling": []}}
    drawn = charts.render(doc)
    assert list(drawn) == ["tails-latency.svg"]
    assert {t: v for t, s, v in bars(drawn["tails-latency.svg"]) if s == "p99"} == {
        "switchyard @ 25 %": 2.0, "switchyard @ 50 %": 3.0,
    }
    # Values of the wrong type, a load that is not an object, a round that is not one, a
    # hostile name: no bar for them, nothing raised, the name escaped.
    odd = '<b>&"x"'
    doc["results"]["tails"] = {
        "switchyard": [entry(1, {25: 1.0}), "not a round", {"loads": {"25": "not a load"}},
                       {"loads": {"50": {"latency_ms": {"p50": "fast", "p99": float("nan"), "p99_9": -1.0}}}},
                       {"loads": {"50": {"latency_ms": [1, 2]}}}],
        odd: [entry(1, {25: 5.0})],
        "nginx": "not a list",
    }
    svg = charts.render(doc)["tails-latency.svg"]
    assert {(t, s) for t, s, _ in bars(svg)} == {
        (f"{name} @ 25 %", p) for name in ("switchyard", odd) for p in ("p50", "p99", "p99.9")
    }
    assert "<b>" not in svg


@pytest.mark.parametrize("meta", [[], "x", {"args": []}, {"args": {"loads": 5}}, {"args": {"loads": [True, 0, 101, "25"]}}])
def test_a_malformed_meta_of_a_tails_results_json_falls_back_to_the_default_loads(meta):
    doc = {"meta": meta, "results": {"tails": {"switchyard": [entry(1, {25: 1.0, 50: 2.0, 75: 3.0})]}}}
    drawn = bars(charts.render(doc)["tails-latency.svg"])
    assert {t for t, _, _ in drawn} == {"switchyard @ 25 %", "switchyard @ 50 %", "switchyard @ 75 %"}


@pytest.mark.parametrize("values", [[1.5e308], [1.7e308, 1.7e308], [5e-324], [10**400]])
def test_values_past_the_bound_or_beneath_the_axis_draw_no_bar_and_raise_nothing(values):
    rounds = []
    for i, v in enumerate(values):
        e = entry(i + 1, {25: 1.0})
        e["loads"]["50"] = {"latency_ms": {"p50": v, "p99": v, "p99_9": v}}
        rounds.append(e)
    doc = {"meta": {}, "results": {"tails": {"switchyard": rounds}}}
    drawn = bars(charts.render(doc)["tails-latency.svg"])
    assert {t for t, _, _ in drawn} <= {"switchyard @ 25 %", "switchyard @ 50 %"}
    assert all(0 < v <= charts.VALUE_MAX for _, _, v in drawn)


def test_control_characters_in_names_still_give_well_formed_xml():
    odd = "sw\u0001\u0000\ufffe\ud800itch"
    doc = {"meta": {"date": "\u0007today"}, "results": {"tails": {odd: [entry(1, {25: 1.0})]}}}
    svg = charts.render(doc)["tails-latency.svg"]
    drawn = bars(svg)  # parses: a character XML cannot hold would raise here
    assert {t for t, _, _ in drawn} == {"switch @ 25 %"}, "the characters XML cannot hold are dropped"


def phase(layout: str, pair: int, cores: str, sat: float, fixed: float) -> dict:
    return {
        "layout": layout, "pair": pair, "cores": cores, "threads_moved": 4, "rate": 5000.0,
        "sat_rps": 20000.0, "sat_errors": 0, "sat_cpu_us_per_req": sat,
        "fixed_requests": 100, "fixed_errors": 0, "fixed_unanswered": 0, "fixed_cpu_us_per_req": fixed, "fixed_p99_ms": 1.0,
    }


def test_the_parallel_table_divides_each_pairs_two_core_phase_by_its_own_one_core_phase():
    rows = [
        # Pair 1 in the order one-two, pair 2 two-one: the ratio is per pair, whatever the order.
        phase("per_core", 1, "0", 30.0, 50.0), phase("per_core", 1, "0,1", 33.0, 45.0),
        phase("per_core", 2, "0,1", 20.0, 60.0), phase("per_core", 2, "0", 40.0, 40.0),
        phase("nginx", 1, "0", 25.0, 35.0), phase("nginx", 1, "0,1", 25.0, 35.0),
    ]
    header, rule, per_core, nginx = tails.parallel_table(rows)
    cells = [c.strip() for c in per_core.strip("|").split("|")]
    assert cells[0] == "per_core" and cells[1] == "2"
    # Saturated: 33/30 = 1.1 and 20/40 = 0.5 (pairing by position would give 33/40 or 20/30).
    assert cells[4] == f"{0.8:.3f} ({0.5:.3f}–{1.1:.3f})"
    # Fixed rate: 45/50 = 0.9 and 60/40 = 1.5.
    assert cells[8] == f"{1.2:.3f} ({0.9:.3f}–{1.5:.3f})"
    assert cells[5] == "5,000"
    ncells = [c.strip() for c in nginx.strip("|").split("|")]
    assert ncells[0] == "nginx" and ncells[4] == "1.000" and ncells[8] == "1.000"
    assert header.count("|") == rule.count("|")


def test_a_pair_missing_a_phase_gives_no_ratio():
    rows = [phase("shared", 1, "0", 30.0, 50.0)]
    cells = [c.strip() for c in tails.parallel_table(rows)[2].strip("|").split("|")]
    assert cells[4] == "—" and cells[8] == "—"


def test_move_threads_moves_every_thread_and_checks_it(tmp_path: Path):
    """On this process: every thread allowed on the given cores, and back."""
    import os
    import threading

    before = os.sched_getaffinity(0)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        first = {min(before)}
        moved = tails.move_threads([os.getpid()], first)
        assert moved >= 2, "the main thread and the worker"
        assert all(os.sched_getaffinity(tid) == first for tid in tails.thread_ids([os.getpid()]))
    finally:
        tails.move_threads([os.getpid()], before)
        stop.set()
        worker.join(timeout=5)
    assert os.sched_getaffinity(0) == before
    with pytest.raises(tails.px.Failed, match="cannot move the threads"):
        # A core this machine does not have is refused by the kernel (EINVAL), and the run
        # fails with what happened rather than measuring a phase that did not move.
        tails.move_threads([os.getpid()], {4096})
    assert os.sched_getaffinity(0) == before
