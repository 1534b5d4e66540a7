"""Run experiments, aggregate seeds, write JSON with provenance, tables and plots."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge.bench._context import Context
from expunge.bench._kinds import KINDS, Kind
from expunge.bench._spec import ExperimentSpec, available_experiments, load_spec
from expunge.exceptions import InvalidParameterError


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    return {
        "git_commit": _git_commit(), "expunge": expunge.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def aggregate(kind: Kind, per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean (and ``<field>_std``) of numeric fields over seeds, rows matched by ``kind.keys``."""
    if len(per_seed) == 1:
        return [dict(r) for r in per_seed[0]]
    out = []
    for row in per_seed[0]:
        key = tuple(row[k] for k in kind.keys)
        matches = [next(r for r in rows if tuple(r[k] for k in kind.keys) == key)
                   for rows in per_seed]
        merged: dict[str, Any] = {}
        for field, value in row.items():
            if field in kind.keys or not isinstance(value, (int, float)) or isinstance(value, bool):
                merged[field] = value
                continue
            values = np.array([m[field] for m in matches], dtype=float)
            merged[field] = float(np.mean(values))
            merged[f"{field}_std"] = float(np.std(values, ddof=1))
        out.append(merged)
    return out


def _format(value: Any, fmt: str, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if fmt == "s":
        return str(value)
    if fmt == "%":
        return f"{100 * float(value):g} %"
    if fmt.endswith("d") and isinstance(value, float):  # an integer field averaged over seeds
        fmt = fmt[:-1] + (".0f" if value.is_integer() else ".1f")
    text = format(value, fmt)
    if std is not None and not math.isnan(std):
        text += " ± " + format(std, fmt.lstrip("+").replace("d", ".1f"))
    return text


def markdown_table(kind: Kind, rows: list[dict[str, Any]]) -> str:
    columns = [c for c in kind.columns if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        # a 95 % interval (``<field>_ci``) when the kind computed one, else the std over seeds
        cells = [_format(row.get(k, float("nan")), f, row.get(f"{k}_ci", row.get(f"{k}_std")))
                 for k, _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_experiment(
    spec: ExperimentSpec, *, quick: bool, seeds: Sequence[int], out: Path,
    data_roots: dict[str, Path | None], log: Callable[[str], None] = print,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run one experiment for every seed; write ``<out>/<name>.json`` and ``.png``."""
    spec = spec.resolved(quick)
    if spec.kind not in KINDS:
        raise InvalidParameterError(
            f"Spec {spec.name!r} has kind {spec.kind!r}; known kinds: {', '.join(sorted(KINDS))}."
        )
    kind = KINDS[spec.kind]
    out.mkdir(parents=True, exist_ok=True)
    log(f"[{spec.name}] {spec.title} ({spec.dataset}{', quick' if quick else ''})")
    started = time.perf_counter()
    per_seed = []
    scratch = Path(tempfile.mkdtemp(prefix=f"expunge-bench-{spec.name}-"))
    try:
        for seed in seeds:
            ctx = Context(spec=spec, seed=int(seed), data_roots=data_roots, scratch=scratch,
                          quick=quick, log=log, show_progress=show_progress)
            per_seed.append(kind.run(ctx)["rows"])
            # each seed fits its own models; free the copies before the next seed
            for child in scratch.iterdir():
                shutil.rmtree(child, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    rows = aggregate(kind, per_seed)
    result = {
        "name": spec.name, "title": spec.title, "kind": spec.kind, "claim": spec.claim,
        "quick": quick, "seeds": list(seeds), "seconds": seconds, "spec": spec.to_dict(),
        "rows": rows, "rows_per_seed": per_seed, "provenance": provenance(),
    }
    (out / f"{spec.name}.json").write_text(json.dumps(result, indent=2, default=float))
    if kind.plot is not None:
        kind.plot(rows, spec.to_dict(), out / f"{spec.name}.png", f"{spec.name}: {spec.title}")
    log(f"[{spec.name}] done in {seconds:.1f} s")
    return result


def render_results(results: list[dict[str, Any]], out: Path) -> str:
    """``results.md``: one section per experiment with its table, plot and provenance."""
    parts = ["# expunge benchmark results", ""]
    for r in results:
        kind = KINDS[r["kind"]]
        spec = r["spec"]
        parts += [f"## {r['name']}: {r['title']}", ""]
        if r.get("claim"):
            parts += [f"*Claim checked:* {r['claim']}", ""]
        parts += [
            f"Dataset **{spec['dataset']}**, model `{spec['train'].get('model')}` "
            f"{spec['train'].get('model_params') or ''}, {spec['train'].get('epochs')} epochs; "
            f"seeds {r['seeds']}; {r['seconds']:.0f} s; commit "
            f"`{r['provenance']['git_commit'][:12]}`.", "",
            markdown_table(kind, r["rows"]), "",
        ]
        if (out / f"{r['name']}.png").is_file():
            parts += [f"![{r['name']}]({r['name']}.png)", ""]
    text = "\n".join(parts)
    (out / "results.md").write_text(text)
    return text


def run_all(names: Sequence[str], *, quick: bool, seeds: Sequence[int], out: Path,
            data_roots: dict[str, Path | None], specs: Path | None = None,
            log: Callable[[str], None] = print,
            show_progress: bool = False) -> list[dict[str, Any]]:
    known = available_experiments(specs)
    if list(names) == ["all"]:
        names = list(known)
    missing = [n for n in names if n not in known]
    if missing:
        raise InvalidParameterError(
            f"Unknown experiment(s) {missing}. Available: {', '.join(known)} or 'all'."
        )
    results = [run_experiment(load_spec(known[n]), quick=quick, seeds=seeds, out=out,
                              data_roots=data_roots, log=log, show_progress=show_progress)
               for n in names]
    render_results(collect_results(out, order=list(known), quick=quick), out)
    return results


def render_folder(out: Path, *, quick: bool, specs: Path | None = None) -> list[dict[str, Any]]:
    """Redraw every plot and ``results.md`` from the result JSON in ``out``; train nothing.

    For changing how results look without rerunning an hour of experiments.
    """
    results = collect_results(out, order=list(available_experiments(specs)), quick=quick)
    if not results:
        mode = "--quick" if quick else "full (no --quick)"
        raise InvalidParameterError(
            f"No {mode} experiment results (*.json) in {str(out)!r}: run the experiments "
            "first, or pass the folder they were written to with --out."
        )
    for r in results:
        kind = KINDS[r["kind"]]
        if kind.plot is not None:
            kind.plot(r["rows"], r["spec"], out / f"{r['name']}.png", f"{r['name']}: {r['title']}")
    render_results(results, out)
    return results


def collect_results(out: Path, *, order: Sequence[str] = (), quick: bool | None = None
                    ) -> list[dict[str, Any]]:
    """Every experiment result JSON in ``out``, in ``order`` (then by name).

    Experiments are often run one at a time into one folder (the full run takes an
    hour); ``results.md`` then covers all of them, not only the last command's.
    Results from the other mode (``--quick`` vs full) are skipped so the two never mix.
    """
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(result, dict) or result.get("kind") not in KINDS or "rows" not in result:
            continue
        if quick is not None and bool(result.get("quick")) != quick:
            continue
        found[result["name"]] = result
    rank = {name: i for i, name in enumerate(order)}
    return [found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(rank)), n))]
