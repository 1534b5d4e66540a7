"""`expunge bench all --quick` runs every experiment end to end (so the benchmark never rots)."""

from __future__ import annotations

import json

import pytest

from expunge.bench import KINDS, available_experiments, load_spec
from expunge.bench._runner import collect_results
from expunge.cli import main


def test_every_spec_loads_and_names_a_known_kind():
    specs = available_experiments()
    assert len(specs) >= 6
    for name, path in specs.items():
        spec = load_spec(path)
        assert spec.kind in KINDS, name
        if spec.kind != "mislabel":  # E6's references are the random and optimal curves
            assert spec.reference in spec.strategies, name
        quick = spec.resolved(quick=True)
        assert quick.dataset == "digits", f"{name}: --quick must run on the embedded digits"


@pytest.mark.parametrize("name", sorted(available_experiments()))
def test_every_experiment_runs_quick_and_writes_json_tables_and_plots(tmp_path, name):
    # one experiment per test (not `bench all`): the suite's workers share them evenly
    assert main(["bench", name, "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    report = (tmp_path / "results.md").read_text()
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["quick"] is True and result["seeds"] == [0]
    assert {"git_commit", "torch", "expunge", "date"} <= set(result["provenance"])
    assert result["rows"], name
    assert f"## {name}:" in report
    reference = result["spec"]["reference"]
    if result["kind"] == "tune":  # the reference is each row's target, not a row of its own
        assert all(row["target"] for row in result["rows"]), name
    else:
        labels = {str(v) for r in result["rows"] for k, v in r.items()
                  if k in ("strategy", "curve", "variant", "method", "value")}
        assert any(label.startswith(reference) for label in labels), (name, labels)
    if f"![{name}]" in report:  # a plot the report shows exists and is a real image
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    for png in tmp_path.glob("*.png"):
        assert png.stat().st_size > 5_000, png


def test_unknown_experiment_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "nope", "--quick", "--out", str(tmp_path)]) == 2
    assert "Unknown experiment(s) ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [[0, 1]])
def test_seeds_give_mean_and_std(tmp_path, seeds):
    args = ["bench", "e2_class_removal", "--quick", "--out", str(tmp_path), "--quiet",
            "--seeds", *map(str, seeds)]
    assert main(args) == 0
    result = json.loads((tmp_path / "e2_class_removal.json").read_text())
    assert len(result["rows_per_seed"]) == 2
    row = result["rows"][0]
    assert "removed_after_std" in row
    assert "±" in (tmp_path / "results.md").read_text()


def test_results_md_covers_experiments_run_one_at_a_time(tmp_path):
    """The full run goes one experiment at a time into one folder: results.md must list every
    result there, in spec order, and never mix --quick results with full ones."""
    assert main(["bench", "e2_class_removal", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    result = json.loads((tmp_path / "e2_class_removal.json").read_text())
    (tmp_path / "zz_later.json").write_text(json.dumps(dict(result, name="zz_later")))
    (tmp_path / "e1_performance.json").write_text(
        json.dumps(dict(result, name="e1_performance", quick=False)))
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a result"}))
    found = collect_results(tmp_path, order=list(available_experiments()), quick=True)
    assert [r["name"] for r in found] == ["e2_class_removal", "zz_later"]
    assert main(["bench", "e2_class_removal", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    report = (tmp_path / "results.md").read_text()
    assert "## e2_class_removal:" in report and "## zz_later:" in report
    assert "## e1_performance:" not in report
    # --render-only redraws plots and results.md from the JSON alone
    for path in (tmp_path / "results.md", tmp_path / "e2_class_removal.png"):
        path.unlink()
    assert main(["bench", "all", "--quick", "--render-only", "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert (tmp_path / "e2_class_removal.png").stat().st_size > 5_000
    redrawn = (tmp_path / "results.md").read_text()
    assert redrawn.startswith(report.split("## zz_later")[0])  # same tables, same order
    assert "![zz_later](zz_later.png)" in redrawn  # its plot now exists too
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "all", "--render-only", "--out", str(empty), "--quiet"]) == 2


def test_e8_reports_a_diverged_request_as_a_failure_and_finishes(tmp_path, monkeypatch):
    # a method that diverges on one seed is a result (the row says which seed), not a
    # crash of the whole benchmark
    import math

    import expunge
    from expunge.bench import _kinds_e8
    from expunge.exceptions import DivergedError

    real = expunge.evaluate

    def evaluate(strategy, **kwargs):
        if strategy.name == "finetune" and strategy.seed == 1:
            raise DivergedError("finetune: non-finite parameters (test)")
        return real(strategy, **kwargs)

    monkeypatch.setattr(_kinds_e8.expunge, "evaluate", evaluate)
    assert main(["bench", "e8_baselines", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    rows = json.loads((tmp_path / "e8_baselines.json").read_text())["rows"]
    finetune = [r for r in rows if r["strategy"] == "finetune"]
    per_set = [r for r in finetune if r["forget_set"] != _kinds_e8.SUMMARY]
    assert per_set and all(r["diverged_seeds"] == [1] and r["seeds"] == [0] for r in per_set)
    summary = next(r for r in finetune if r["forget_set"] == _kinds_e8.SUMMARY)
    assert math.isnan(summary["avg_gap"]) and summary["diverged"]
    retrain = next(r for r in rows if r["strategy"] == "retrain"
                   and r["forget_set"] == _kinds_e8.SUMMARY)
    assert retrain["avg_gap"] == 0.0


def test_the_e8_summary_reads_a_run_cut_short_from_its_log():
    # benchmarks/summarise_e8.py --log: the JSON is written only at the end of a run
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "summarise_e8.py"
    spec = importlib.util.spec_from_file_location("summarise_e8", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log = """
      seed 0 retrain random: UA 0.0200 (retrain 0.0200), TA 0.9776, request 24.00 s,
    evaluation 69.8 s
      seed 0 finetune random: UA 0.0250 (retrain 0.0200), TA 0.9764, request
    12.00 s, evaluation 34.8 s
      seed 0 scrub random: diverged (scrub: forgetting 5923 samples gave a broken
    model)
      seed 1 retrain random: UA 0.0300 (retrain 0.0300), TA 0.9700, request 20.00 s,
    """
    rows = module.rows_from_log(log)
    assert [(r["seed"], r["strategy"], r["diverged"]) for r in rows] == [
        (0, "retrain", False), (0, "finetune", False), (0, "scrub", True), (1, "retrain", False)]
    finetune = rows[1]
    assert finetune["TA_ref"] == 0.9776 and finetune["rel_time"] == 0.5
    text = module.summarise_log(rows, 2.0, 1.0)
    assert "seeds with every strategy: [0]" in text
    assert "finetune         UA gap   +0.50  TA gap   -0.12" in text and "pass" in text
    assert "scrub            diverged on seeds [0]" in text
