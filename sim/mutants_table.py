#!/usr/bin/env python3
"""The mutation study's table (sim/mutants.sh, docs/simulation.md "Mutation study").

Reads cargo-mutants' outcomes.json from a mutants.out directory and the list of mutants judged
equivalent, and prints, per area: mutants, caught, missed, timed out, unviable, equivalent, and
the score: detected (caught or timed out) over the non-equivalent viable mutants. Then the
missed mutants not judged equivalent, the mean build and test time per mutant, and the time the
whole study would take at that rate.

    python3 sim/mutants_table.py target/mutants-study/mutants.out sim/mutants-equivalent.txt

A mutant's stable name is cargo-mutants' name without the line and column
(`gateway/core/src/hlc.rs: replace < with <= in Hlc::tick`), so the equivalents list survives
edits elsewhere in the file; two mutants of the same name in one function share a judgement.
"""

import json
import re
import sys
from collections import OrderedDict
from pathlib import Path

AREAS = OrderedDict(
    [
        ("gateway/core/src/hlc.rs", "hlc"),
        ("gateway/core/src/registry.rs", "registry"),
        ("gateway/core/src/event.rs", "event"),
        ("gateway/core/src/balance.rs", "balance"),
        ("gateway/node/src/registrar.rs", "registrar"),
        ("gateway/node/src/replication.rs", "replication"),
        ("gateway/node/src/outbox.rs", "outbox"),
        ("gateway/node/src/store.rs", "store"),
        ("gateway/node/src/forwarding.rs", "forwarding"),
        ("gateway/node/src/forwarding/channel.rs", "forwarding"),
    ]
)

# cargo-mutants' summary of one outcome, to the table's column.
COLUMNS = {
    "CaughtMutant": "caught",
    "MissedMutant": "missed",
    "Timeout": "timeout",
    "Unviable": "unviable",
}

LINE_COL = re.compile(r"^(\S+?):\d+:\d+: ")


def stable_name(name: str) -> str:
    return LINE_COL.sub(r"\1: ", name, count=1)


def read_equivalents(path: Path) -> dict:
    """`stable name  # why` per line; blank lines and lines starting with # are skipped."""
    judged = {}
    if not path.exists():
        return judged
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, why = line.partition(" # ")
        judged[stable_name(name.strip())] = why.strip()
    return judged


def mutant_of(outcome: dict):
    scenario = outcome.get("scenario")
    if isinstance(scenario, dict) and "Mutant" in scenario:
        return scenario["Mutant"]
    return None


def name_of(mutant: dict) -> str:
    if "name" in mutant:
        return mutant["name"]
    span = mutant.get("span", {}).get("start", {})
    func = mutant.get("function", {}) or {}
    return (
        f"{mutant.get('file')}:{span.get('line')}:{span.get('column')}: "
        f"replace {mutant.get('replacement')} in {func.get('function_name')}"
    )


def durations(outcome: dict) -> dict:
    out = {}
    for phase in outcome.get("phase_results", []):
        d = phase.get("duration")
        if isinstance(d, dict):  # {"secs": .., "nanos": ..}
            d = d.get("secs", 0) + d.get("nanos", 0) / 1e9
        if isinstance(d, (int, float)):
            out[phase.get("phase")] = out.get(phase.get("phase"), 0.0) + float(d)
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, equivalents_path = Path(sys.argv[1]), Path(sys.argv[2])
    data = json.loads((out_dir / "outcomes.json").read_text(encoding="utf-8"))
    equivalents = read_equivalents(equivalents_path)
    listed = None
    mutants_json = out_dir / "mutants.json"
    if mutants_json.exists():
        listed = len(json.loads(mutants_json.read_text(encoding="utf-8")))

    rows = OrderedDict((area, OrderedDict()) for area in dict.fromkeys(AREAS.values()))
    for row in rows.values():
        for col in ("mutants", "caught", "missed", "timeout", "unviable", "equivalent"):
            row[col] = 0
    missed = []
    build_s, test_s = [], []
    for outcome in data.get("outcomes", []):
        mutant = mutant_of(outcome)
        if mutant is None:
            continue
        area = AREAS.get(mutant.get("file"), "other")
        row = rows.setdefault(area, OrderedDict((c, 0) for c in rows["hlc"]))
        col = COLUMNS.get(outcome.get("summary"))
        if col is None:
            continue
        row["mutants"] += 1
        row[col] += 1
        name = name_of(mutant)
        if col == "missed":
            why = equivalents.get(stable_name(name))
            if why is not None:
                row["equivalent"] += 1
            else:
                missed.append(name)
        d = durations(outcome)
        if "Build" in d:
            build_s.append(d["Build"])
        if "Test" in d:
            test_s.append(d["Test"])

    header = "| area | mutants | caught | missed | timed out | unviable | equivalent | score |"
    print(header)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = OrderedDict((c, 0) for c in rows["hlc"])
    for area, row in list(rows.items()) + [("**all**", total)]:
        if area != "**all**":
            for c in total:
                total[c] += row[c]
        if row["mutants"] == 0:
            continue
        detected = row["caught"] + row["timeout"]
        judged = detected + row["missed"] - row["equivalent"]
        score = f"{100.0 * detected / judged:.0f} %" if judged else "-"
        print(
            f"| {area} | {row['mutants']} | {row['caught']} | {row['missed']} | "
            f"{row['timeout']} | {row['unviable']} | {row['equivalent']} | {score} |"
        )
    print()
    print("score: (caught + timed out) / (caught + timed out + missed - equivalent)")
    if missed:
        print()
        print("missed, not judged equivalent:")
        for name in missed:
            print(f"  {name}")
    if build_s and test_s:
        mean_b, mean_t = sum(build_s) / len(build_s), sum(test_s) / len(test_s)
        print()
        print(
            f"per mutant: build {mean_b:.0f} s, test {mean_t:.0f} s (means over "
            f"{len(build_s)} builds and {len(test_s)} tests)"
        )
        if listed:
            hours = listed * (mean_b + mean_t) / 3600.0
            print(f"{listed} mutants in this run's selection: about {hours:.1f} h at that rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
