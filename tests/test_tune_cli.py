"""`expunge tune`: the wrapper around the tuning spec (the protocol itself runs in
`bench all --quick`, see test_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

from expunge.cli import main


def test_tune_refuses_a_strategy_without_a_grid(tmp_path, capsys):
    assert main(["tune", "retrain", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No tuning grid for ['retrain']" in err and "finetune" in err


def test_tune_refuses_a_spec_of_another_kind(tmp_path, capsys):
    from expunge.bench import spec_dir

    spec = spec_dir() / "e3_membership.toml"
    assert main(["tune", "--spec", str(spec), "--out", str(tmp_path)]) == 2
    assert "not a tuning spec" in capsys.readouterr().err


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "full"
ROUNDS = [RESULTS / f"{name}.json" for name in
          ("tune_baselines", "tune_baselines_round2", "tune_baselines_round3",
           "tune_baselines_round4", "tune_baselines_round5", "tune_baselines_round6")]


def test_the_shipped_defaults_are_the_points_the_protocol_chooses(capsys):
    """The defaults in the code are what the rule of docs/baselines.md picks from the
    stored tuning rounds: a default edited by hand, or a rule changed without re-choosing,
    fails here (exit 1 names the method)."""
    assert main(["tune", "--choose-from", *map(str, ROUNDS)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "scrub: chosen" in out and "differs" not in out


def _point(ua: float, ta: float, objective: float, seconds: float) -> dict:
    return {"random_UA": ua, "random_TA": ta, "objective": objective,
            "relative_time": seconds, "params": {}}


def test_choose_prefers_acceptable_points_then_the_objective_then_the_cheaper():
    from expunge.bench._kinds_tune import acceptable, choose

    target = {"random": {"UA": 0.04, "TA": 0.936}}
    rule = {"forget_set": "random", "UA": 0.02, "TA": 0.01}
    over_forgets = _point(0.068, 0.925, 0.0239, 0.1)   # 2.8 points too many: not acceptable
    costs_accuracy = _point(0.04, 0.90, 0.0300, 0.1)    # 3.6 points of test accuracy
    edge = _point(0.06, 0.926, 0.0356, 0.2)             # exactly 2 and 1 points: acceptable
    cheap_tie = _point(0.03, 0.93, 0.0360, 0.1)         # within 0.1 point of it, cheaper
    worse = _point(0.04, 0.936, 0.0800, 0.01)
    assert not acceptable(over_forgets, target, rule)
    assert not acceptable(costs_accuracy, target, rule)
    assert acceptable(edge, target, rule) and acceptable(cheap_tie, target, rule)
    points = [over_forgets, costs_accuracy, edge, cheap_tie, worse]
    assert choose(points, 0.001) is over_forgets            # unmarked: the best objective
    for point in points:
        point["acceptable"] = acceptable(point, target, rule)
    assert choose(points, 0.001) is cheap_tie
    assert choose(points, 0.0) is edge
    # no acceptable point: the best of all
    assert choose([over_forgets, costs_accuracy], 0.001) is over_forgets


def test_choose_from_refuses_a_result_of_another_kind(tmp_path, capsys):
    other = tmp_path / "e8.json"
    other.write_text(json.dumps({"kind": "baselines", "rows": []}))
    assert main(["tune", "--choose-from", str(other)]) == 2
    assert "not a tuning run's" in capsys.readouterr().err


def test_tune_without_out_or_choose_from_says_what_it_needs(capsys):
    assert main(["tune", "ssd", "--quick"]) == 2
    assert "needs --out FOLDER" in capsys.readouterr().err


def test_tuning_over_several_seeds_averages_each_point_and_accepts_it_on_every_seed(
        tmp_path, capsys):
    """``settings.seed = [a, b]``: each grid point is scored on both tuning seeds (two
    training runs, forget sets and targets); its objective is the mean, it is acceptable
    only where it is on each seed, and `--choose-from` judges it the same way."""
    import numpy as np

    from expunge.bench import spec_dir
    from expunge.bench._kinds_tune import acceptable, choose_over_rounds

    text = (spec_dir() / "tune_baselines.toml").read_text()
    assert "\nseed = 100 " in text
    spec = tmp_path / "tune_two_seeds.toml"
    spec.write_text(text.replace("\nseed = 100 ", "\nseed = [100, 101] ", 1))
    out = tmp_path / "out"
    assert main(["tune", "ssd", "--spec", str(spec), "--quick", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "tune_two_seeds.json").read_text())
    (row,) = result["rows"]
    assert row["seeds"] == [100, 101] and len(row["targets"]) == 2
    assert row["targets"][0] != row["targets"][1]  # two training runs, two problems
    rule = result["spec"]["settings"]["acceptable"]
    for point in row["grid"]:
        runs = point["per_seed"]
        assert len(runs) == 2 and all(r["params"] == point["params"] for r in runs)
        assert point["objective"] == float(np.mean([r["objective"] for r in runs]))
        assert point["acceptable"] == all(
            acceptable(r, t, rule) for r, t in zip(runs, row["targets"], strict=True))
    chosen = choose_over_rounds([result], float(result["spec"]["settings"]["tie"]), rule)
    assert chosen["ssd"]["params"] == row["chosen_params"]


def test_points_on_more_tuning_seeds_supersede_one_seed_rounds():
    """A method tuned again on several seeds is chosen among those points only, even
    where a one-seed round has a better (incomparable) objective; a method the new round
    leaves out keeps its one-seed choice."""
    from expunge.bench._kinds_tune import choose_over_rounds

    target = {"random": {"UA": 0.04, "TA": 0.936}}
    rule = {"forget_set": "random", "UA": 0.02, "TA": 0.01}

    def row(label, points, seeds=1):
        row_ = {"strategy": label, "target": target, "grid": points}
        if seeds > 1:
            row_["targets"] = [target] * seeds
        return row_

    def seeded(point, seeds):
        return {**point, "per_seed": [dict(point)] * seeds}

    one_seed_best = {**_point(0.04, 0.936, 0.010, 0.1), "params": {"lr": 1}}
    one_seed_other = {**_point(0.04, 0.936, 0.020, 0.1), "params": {"lr": 2}}
    three_seed_worse = seeded({**_point(0.05, 0.93, 0.030, 0.1), "params": {"lr": 3}}, 3)
    three_seed_off = seeded({**_point(0.09, 0.93, 0.025, 0.1), "params": {"lr": 4}}, 3)
    round1 = {"name": "one", "rows": [row("salun", [one_seed_best]),
                                      row("finetune", [one_seed_other])]}
    round4 = {"name": "four", "rows": [row("salun", [three_seed_worse, three_seed_off], 3)]}
    chosen = choose_over_rounds([round1, round4], 0.001, rule)
    assert chosen["salun"]["params"] == {"lr": 3} and chosen["salun"]["run"] == "four"
    assert chosen["salun"]["n_seeds"] == 3 and chosen["salun"]["acceptable"]
    assert chosen["finetune"]["params"] == {"lr": 2} and chosen["finetune"]["run"] == "one"
    # without the three-seed round, the one-seed point wins
    assert choose_over_rounds([round1], 0.001, rule)["salun"]["params"] == {"lr": 1}


def test_a_grid_over_a_fit_time_parameter_fits_once_per_value(tmp_path):
    """Certified removal's ``l2`` and ``sigma`` are part of the training objective,
    recorded in the store and fixed on open: the tuning fits a model per value (it failed
    with "cannot be changed on open" when every point reopened one fitted store)."""
    from expunge.bench import spec_dir
    from expunge.bench._kinds_tune import split_fit_time

    assert split_fit_time("certified", {"l2": 0.01, "on_budget": "retrain"}) == (
        {"l2": 0.01}, {"on_budget": "retrain"})
    assert split_fit_time("salun", {"unlearn_lr": 0.1}) == ({}, {"unlearn_lr": 0.1})
    text = (spec_dir() / "tune_baselines.toml").read_text()
    quick = 'only = ["ssd"], grids = { ssd = { alpha = [1.0, 10.0], dampening = [1.0] } }'
    assert quick in text
    spec = tmp_path / "tune_l2.toml"
    spec.write_text(text.replace(
        quick, 'only = ["certified"], grids = { certified = { l2 = [1e-3, 1.0], '
               'sigma = [1.0] } }'))
    out = tmp_path / "out"
    assert main(["tune", "certified", "--spec", str(spec), "--quick", "--out", str(out),
                 "--quiet"]) == 0
    (row,) = json.loads((out / "tune_l2.json").read_text())["rows"]
    small, large = row["grid"]
    assert (small["params"]["l2"], large["params"]["l2"]) == (1e-3, 1.0)
    # two fits: a 1000x stronger penalty gives another model (random-set accuracy moves)
    assert small["random_RA"] != large["random_RA"]
