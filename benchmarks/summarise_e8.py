"""Check issue 16's targets on an E8 result and report what the evaluation cost.

    .venv/bin/python benchmarks/summarise_e8.py benchmarks/results/full/e8_baselines.json

Reads the JSON that ``expunge bench e8_baselines`` (or ``e8_baselines_full``) wrote and
prints, from its rows only (nothing is recomputed):

* per forget set, which approximate baselines bring the forget-set error (UA) within
  ``--ua-points`` of Retrain's while keeping test accuracy (TA) within ``--ta-points``
  (issue 16: 2 and 1 points, "at least 4 of the 10" on the memorising model);
* the approximate method with the lowest Avg. Gap to Retrain (mean over the three forget
  sets, with its 95 % interval over training seeds) and its request time relative to
  Retrain's (issue 16: below 2 points at <= 10 % of Retrain's time);
* the seconds each metric family took per evaluation (the report's ``timings``, summed
  over the seeds in the JSON, divided by their number): RMIA and KLoM next to the SVC
  attack, the predictions and the references they reuse;
* every (method, forget set, seed) whose request diverged.

``--log`` reads a run cut short instead (its JSON is written only at the end): the
per-seed lines of the runner's log give UA, Retrain's UA, TA and the request seconds, and
the script reports the UA and TA gaps and the time ratio over the seeds that finished
every strategy.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

#: the ten baselines of issue 16 (PUMA, naive influence and the exact strategies are
#: E8's comparison rows, not part of the "4 of 10" count)
BASELINES = ("finetune", "gradient_ascent", "neggrad_plus", "random_labels", "l1_sparse",
             "salun", "scrub", "ssd", "fisher", "certified")
APPROXIMATE = (*BASELINES, "puma", "influence")
SUMMARY = "mean of 3"


def _points(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:+.2f}"


def summarise(result: dict[str, Any], ua_points: float, ta_points: float) -> str:
    rows = result["rows"]
    lines = [f"# {result['name']} (commit {result['provenance']['git_commit'][:7]}, "
             f"{result['seconds'] / 60:.0f} min)", ""]
    per_set = [r for r in rows if r["forget_set"] != SUMMARY]
    lines.append(f"## Baselines within {ua_points:g} points of Retrain's UA and "
                 f"{ta_points:g} of its TA")
    for name in dict.fromkeys(r["forget_set"] for r in per_set):
        passing, table = [], []
        for r in per_set:
            if r["forget_set"] != name or r["strategy"] not in BASELINES:
                continue
            ua_gap, ta_gap = r["UA"] - r["UA_ref"], r["TA"] - r["TA_ref"]
            ok = abs(ua_gap) * 100 <= ua_points and abs(ta_gap) * 100 <= ta_points
            passing += [r["strategy"]] if ok else []
            table.append(f"  {r['strategy']:<16} UA gap {_points(ua_gap):>7}  "
                         f"TA gap {_points(ta_gap):>7}  {'pass' if ok else ''}")
        lines += [f"{name}: {len(passing)} of {len(BASELINES)} ({', '.join(passing) or '-'})",
                  *table]
    lines += ["", "## Avg. Gap to Retrain (mean of the three forget sets) and time"]
    summaries = sorted((r for r in rows if r["forget_set"] == SUMMARY
                        and r["strategy"] in APPROXIMATE),
                       key=lambda r: (math.isnan(r["avg_gap"]), r["avg_gap"]))
    for r in summaries:
        ci = r.get("avg_gap_ci")
        lines.append(f"  {r['strategy']:<16} {100 * r['avg_gap']:6.2f} points"
                     + (f" +- {100 * ci:.2f}" if ci is not None else "")
                     + f"   time {100 * r['rel_time']:6.1f} % of Retrain's"
                     + (f"   diverged: {', '.join(r['diverged'])}" if r.get("diverged") else ""))
    lines += ["", "## Seconds per evaluation, by metric family (mean over rows and seeds)"]
    totals: dict[str, list[float]] = defaultdict(list)
    for r in per_set:
        seeds = max(len(r.get("seeds", [])), 1)
        for family, seconds in (r.get("timings") or {}).items():
            totals[family].append(float(seconds) / seeds)
    for family, values in sorted(totals.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"  {family:<16} {sum(values) / len(values):8.3f} s "
                     f"(max {max(values):.3f})")
    diverged = [f"{r['strategy']} {r['forget_set']} seeds {r['diverged_seeds']}"
                for r in per_set if r.get("diverged_seeds")]
    lines += ["", "## Diverged requests", *(diverged or ["  none"])]
    return "\n".join(lines)


#: one evaluated row of the runner's log: "seed 0 finetune random: UA 0.0250 (retrain
#: 0.0200), TA 0.9764, request 27.80 s, evaluation 34.8 s" (wrapped over lines), or
#: "seed 0 scrub class: diverged (...)"
_ROW = re.compile(r"seed (\d+) (\w+) (\w+): (?:UA ([\d.]+) \(retrain ([\d.]+)\), TA ([\d.]+), "
                  r"request ([\d.]+) s|(diverged))")


def rows_from_log(text: str) -> list[dict[str, Any]]:
    """The per-seed rows of a run cut short, from its log (the JSON is written only at
    the end): UA, Retrain's UA, TA, and the request seconds; TA of Retrain from its row."""
    flat = " ".join(text.split())
    rows = []
    for seed, strategy, name, ua, ua_ref, ta, seconds, diverged in _ROW.findall(flat):
        rows.append({"seed": int(seed), "strategy": strategy, "forget_set": name,
                     "diverged": bool(diverged),
                     **({} if diverged else {"UA": float(ua), "UA_ref": float(ua_ref),
                                             "TA": float(ta), "seconds": float(seconds)})})
    retrain = {(r["seed"], r["forget_set"]): r for r in rows if r["strategy"] == "retrain"}
    for r in rows:
        ref = retrain.get((r["seed"], r["forget_set"]))
        if ref is not None and not r["diverged"]:
            r["TA_ref"], r["rel_time"] = ref["TA"], r["seconds"] / ref["seconds"]
    return rows


def summarise_log(rows: list[dict[str, Any]], ua_points: float, ta_points: float) -> str:
    seeds = sorted({r["seed"] for r in rows if r["strategy"] == "retrain"})
    complete = [s for s in seeds if {r["strategy"] for r in rows if r["seed"] == s}
                >= {r["strategy"] for r in rows}]
    lines = [f"# from the log: seeds with every strategy: {complete} (of {seeds} started)", ""]
    mine = [r for r in rows if r["seed"] in complete]
    for name in dict.fromkeys(r["forget_set"] for r in mine):
        lines.append(f"## {name}: UA and TA gaps to Retrain (points), time / Retrain's request")
        for strategy in dict.fromkeys(r["strategy"] for r in mine):
            got = [r for r in mine if r["strategy"] == strategy and r["forget_set"] == name]
            if not got:
                continue
            failed = [r["seed"] for r in got if r["diverged"]]
            done = [r for r in got if not r["diverged"]]
            if not done:
                lines.append(f"  {strategy:<16} diverged on seeds {failed}")
                continue
            ua = sum(r["UA"] - r["UA_ref"] for r in done) / len(done)
            ta = sum(r["TA"] - r["TA_ref"] for r in done) / len(done)
            rel = sum(r["rel_time"] for r in done) / len(done)
            ok = (not failed and strategy in BASELINES and abs(ua) * 100 <= ua_points
                  and abs(ta) * 100 <= ta_points)
            lines.append(f"  {strategy:<16} UA gap {_points(ua):>7}  TA gap {_points(ta):>7}  "
                         f"time {100 * rel:7.1f} %" + ("  pass" if ok else "")
                         + (f"  diverged on seeds {failed}" if failed else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*", type=Path)
    parser.add_argument("--log", type=Path, action="append", default=[],
                        help="a run's log instead (a run cut short writes no JSON)")
    parser.add_argument("--rows-out", type=Path, help="write the rows read from --log here")
    parser.add_argument("--ua-points", type=float, default=2.0)
    parser.add_argument("--ta-points", type=float, default=1.0)
    args = parser.parse_args()
    for path in args.json:
        print(summarise(json.loads(path.read_text()), args.ua_points, args.ta_points))
        print()
    for path in args.log:
        rows = rows_from_log(path.read_text())
        if args.rows_out:
            args.rows_out.write_text(json.dumps({"log": str(path), "rows": rows}, indent=1))
        print(summarise_log(rows, args.ua_points, args.ta_points))
        print()


if __name__ == "__main__":
    main()
