"""`expunge bench all --quick` runs every experiment end to end (so the benchmark never rots)."""

from __future__ import annotations

import json

import pytest

from expunge.bench import KINDS, available_experiments, load_spec
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


def test_bench_all_quick_writes_json_tables_and_plots(tmp_path, capsys):
    assert main(["bench", "all", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    names = list(available_experiments())
    report = (tmp_path / "results.md").read_text()
    for name in names:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["quick"] is True and result["seeds"] == [0]
        assert {"git_commit", "torch", "expunge", "date"} <= set(result["provenance"])
        assert result["rows"], name
        assert f"## {name}:" in report
        reference = result["spec"]["reference"]
        labels = {str(v) for r in result["rows"] for k, v in r.items()
                  if k in ("strategy", "curve", "variant", "method", "value")}
        assert any(label.startswith(reference) for label in labels), (name, labels)
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 5_000 for p in pngs)


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
