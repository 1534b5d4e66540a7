"""expunge.evaluate end to end on digits with tiny models, the report, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import expunge
from expunge.data import IndexedDataset, class_forget_ids, random_forget_ids
from expunge.evaluation import EvaluationReport, evaluate
from expunge.evaluation._reference import store_bytes_excluding_cache
from expunge.exceptions import (
    DivergedError,
    InvalidParameterError,
    InvalidRequestError,
    UnknownSampleError,
)
from expunge.strategies.base import CACHE_PREFIX

FAST: dict[str, Any] = {"model": "logreg", "epochs": 3, "batch_size": 32, "lr": 0.1,
                        "momentum": 0.9}
CHEAP_ATTACKS = ["loss", "svc", "logistic"]


@pytest.fixture(scope="module")
def data(digits: tuple[IndexedDataset, IndexedDataset]) -> tuple[IndexedDataset, IndexedDataset]:
    train, test = digits
    return train.select(train.ids[:600]), test


@pytest.fixture(scope="module")
def forget_ids(data: tuple[IndexedDataset, IndexedDataset]) -> np.ndarray:
    return random_forget_ids(data[0], n=30, seed=1)


def _values(report: EvaluationReport, prefix: str) -> list[tuple[str, Any, Any, Any]]:
    return [(r.key, r.model, r.reference, r.gap) for r in report.metrics
            if r.key.startswith(prefix)]


# ------------------------------------------------------------------------ semantics
def test_retrain_is_bitwise_its_own_reference(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    model = expunge.Retrain(**FAST).fit(train)
    report = evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                      attacks="default", forget=True)
    assert report.status == "forgotten by evaluate"
    assert report.n_forget == 30 and report.n_retain == 570 and report.n_test == len(test)
    # an exact strategy equals retraining, so every gap and distance is exactly 0
    gaps = [r.gap for r in report.metrics if r.gap is not None]
    assert gaps and all(g == 0.0 for g in gaps)
    assert report["dist.param_l2"].model == 0.0
    assert report["dist.agreement.test"].model == 1.0
    assert report["dist.js.forget"].model == 0.0
    assert report["avg_gap"].model == 0.0
    assert report["cost.samples_retrained"].model == 570
    assert report["cost.forget_seconds"].model > 0
    # the report's accuracies are the strategy's own
    assert report["TA"].model == pytest.approx(model.score(test))
    assert report["UA"].model == pytest.approx(1 - model.score(train.select(forget_ids)))
    assert report.runs[0]["forget_report"]["ids"] == forget_ids.tolist()


def test_not_forgotten_yet_is_a_baseline(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    model = expunge.Retrain(**FAST).fit(train)
    report = evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                      attacks=CHEAP_ATTACKS)
    assert report.status == "not forgotten yet"
    assert len(model.ledger.entries("forget")) == 0  # evaluate did not forget anything
    assert any("not forgotten yet" in n for n in report.notes)
    assert report["cost.forget_seconds"].model is None
    # the model still trained on the forget set: it differs from the reference
    assert report["dist.param_l2"].model > 0


def test_forgotten_ids_need_the_original_data(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    model = expunge.Retrain(**FAST).fit(train)
    request = model.forget(forget_ids)
    with pytest.raises(InvalidParameterError, match="pass the original training data as train="):
        evaluate(model, test=test, forget_ids=forget_ids)
    report = evaluate(model, train=train, test=test, forget_ids=forget_ids,
                      attacks=["loss"])
    assert report.status == "forgotten"
    assert report.reference is None and report["UA"].reference is None
    assert report["cost.forget_seconds"].model == pytest.approx(
        model.ledger.entries("forget")[0].seconds)
    assert report.runs[0]["forget_report"]["request_ids"] == [request.request_id]
    # a train= that does not match the strategy's samples is refused
    wrong = train.with_labels((train.y + 1) % 10)
    with pytest.raises(expunge.exceptions.DatasetError, match="same samples"):
        evaluate(model, train=wrong, test=test, forget_ids=forget_ids, attacks=["loss"])


def test_requests_that_cannot_be_evaluated_are_refused(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    model = expunge.Retrain(**FAST).fit(train)
    model.forget(forget_ids[:5])
    with pytest.raises(InvalidRequestError, match="already forgotten"):
        evaluate(model, train=train, test=test, forget_ids=forget_ids)
    with pytest.raises(UnknownSampleError, match="never in this strategy"):
        evaluate(model, train=train, test=test, forget_ids=[999_999])
    with pytest.raises(InvalidParameterError, match="unknown attack"):
        evaluate(model, test=test, forget_ids=forget_ids[5:], attacks=["loss", "apollo"])
    with pytest.raises(InvalidParameterError, match="reference must be"):
        evaluate(model, test=test, forget_ids=forget_ids[5:], reference="scratch")
    with pytest.raises(InvalidParameterError, match="shadow_models"):
        evaluate(model, test=test, forget_ids=forget_ids[5:], shadow_models=2)
    with pytest.raises(InvalidRequestError, match="duplicates"):
        evaluate(model, test=test, forget_ids=[forget_ids[6], forget_ids[6]])
    with pytest.raises(InvalidParameterError, match="shape"):
        evaluate(model, test=IndexedDataset(np.zeros((3, 5)), [0, 1, 2]),
                 forget_ids=forget_ids[5:])
    assert len(model.ledger) == 2  # nothing was recorded by the refused calls


def test_class_forgetting_reports_the_removed_class(data: Any) -> None:
    train, test = data
    ids = class_forget_ids(train, 3)
    model = expunge.Retrain(**FAST).fit(train)
    report = evaluate(model, test=test, forget_ids=ids, reference="retrain", attacks=["loss"],
                      forget=True)
    assert report.removed_class == 3
    removed = report["removed_class_TA"]
    assert removed.reference <= 0.05  # a model that never saw class 3 cannot predict it
    assert removed.model == removed.reference  # Retrain is exact
    assert report["other_classes_TA"].model > 0.5
    assert report.curves["per_class"]["reference"][3] == removed.reference


def test_reference_is_cached_in_the_store_until_the_next_forget(
    data: Any, forget_ids: np.ndarray, tmp_path: Path
) -> None:
    train, test = data
    sisa = expunge.SISA(**FAST, n_shards=2, n_slices=2, store=tmp_path / "s").fit(train)
    first = evaluate(sisa, test=test, forget_ids=forget_ids, reference="retrain",
                     attacks=["loss"])
    assert first.reference is not None and first.reference["cached"] is False
    blob = first.reference["cache_blob"]
    assert blob.startswith(CACHE_PREFIX) and sisa.store_.has_blob(blob)
    sisa.close()
    reopened = expunge.open(tmp_path / "s")
    again = evaluate(reopened, test=test, forget_ids=forget_ids, reference="retrain",
                     attacks=["loss"])
    assert again.reference["cached"] is True
    assert again.reference["fingerprint"] == first.reference["fingerprint"]
    assert again["UA"].reference == first["UA"].reference
    assert again.timings["reference"] < first.timings["reference"] + 1.0
    # the cache does not count as the model's store
    blob_file = tmp_path / "s" / "blobs" / (blob + ".safetensors")
    assert blob_file.is_file()
    assert store_bytes_excluding_cache(reopened.store_) == (
        reopened.store_.size_bytes() - blob_file.stat().st_size)
    # any forget purges every cache blob, and the ledger lists it
    request = reopened.forget(forget_ids[:1])
    assert blob in request.purged and not reopened.store_.has_blob(blob)
    reopened.close()


def test_user_reference_matches_retrain_reference(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    model = expunge.SISA(**FAST, n_shards=2, n_slices=2).fit(train)
    by_name = evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                       attacks=["loss"], cache_reference=False)
    given = evaluate(model, test=test, forget_ids=forget_ids,
                     reference=expunge.Retrain(**FAST), attacks=["loss"])
    assert given.reference["kind"] == "strategy"
    assert given.reference["fingerprint"] == by_name.reference["fingerprint"]
    assert given["TA"].reference == by_name["TA"].reference
    holding = expunge.Retrain(**FAST).fit(train)
    with pytest.raises(InvalidParameterError, match="never have seen the forget set"):
        evaluate(model, test=test, forget_ids=forget_ids, reference=holding)


def test_sisa_votes_are_clipped_and_parameter_distance_is_na(
    data: Any, forget_ids: np.ndarray
) -> None:
    train, test = data
    sisa = expunge.SISA(**FAST, n_shards=3, n_slices=2, aggregation="vote").fit(train)
    report = evaluate(sisa, test=test, forget_ids=forget_ids[:2], reference="retrain",
                      attacks="default", forget=True)
    assert any("clip" in n for n in report.notes)
    assert any("logistic attack: n/a" in n for n in report.notes)  # 2 forget samples
    assert report["mia.logistic.accuracy"].model is None
    assert report["dist.param_l2"].model is None
    assert np.isfinite(report["mia.loss.auc"].model)
    json.loads(report.to_json())  # no NaN or infinity anywhere
    assert report["cost.samples_retrained"].model < report["cost.samples_retrained"].reference


def test_seeds_give_mean_and_std(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    template = expunge.Retrain(**FAST)  # unfitted: a template
    report = evaluate(template, train=train, test=test, forget_ids=forget_ids,
                      reference="retrain", attacks=["loss"], seeds=[0, 1])
    assert report.seeds == [0, 1] and len(report.runs) == 2
    assert report.status == "forgotten by evaluate"
    ta = report["TA"]
    per_seed = [next(r for r in run["metrics"] if r["key"] == "TA")["model"]
                for run in report.runs]
    assert ta.model == pytest.approx(np.mean(per_seed))
    assert ta.model_std == pytest.approx(np.std(per_seed, ddof=1))
    assert report.runs[0]["fingerprint"] != report.runs[1]["fingerprint"]
    assert not template.is_fitted  # the template itself is untouched
    assert "fit + forget (seeds)" in report.timings


def test_lira_and_ulira_on_an_exact_strategy(data: Any, forget_ids: np.ndarray) -> None:
    train, test = data
    model = expunge.Retrain(**FAST).fit(train)
    report = evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                      attacks=["lira", "ulira"], shadow_models=4, forget=True)
    assert "shadow models" in report.timings
    assert 0.0 <= report["mia.lira.auc"].model <= 1.0
    assert report["mia.lira.auc"].gap == 0.0
    # unlearned and retrained Retrain shadows both never trained on the sample: the held-out
    # shadows cannot be told apart beyond noise (4 x 30 pairs)
    assert abs(report["mia.ulira.auc"].model - 0.5) < 0.2
    assert 0.0 <= report["mia.ulira.accuracy"].model <= 1.0
    # 30 samples x 2 retrained shadows each = 60 non-member pairs: too few for 1 % FPR
    assert report["mia.ulira.tpr_at_1pct"].model is None
    assert any("4 shadow retrain models" in n for n in report.notes)


# --------------------------------------------------------------------------- report
def test_report_round_trips_and_writes_files(
    data: Any, forget_ids: np.ndarray, tmp_path: Path
) -> None:
    train, test = data
    model = expunge.SISA(**FAST, n_shards=2, n_slices=2, aggregation="mean").fit(train)
    report = evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                      attacks="default", forget=True)
    assert EvaluationReport.from_json(report.to_json()) == report
    assert EvaluationReport.from_dict(report.to_dict()) == report
    with pytest.raises(InvalidParameterError, match="unexpected keys"):
        EvaluationReport.from_dict({**report.to_dict(), "extra": 1})
    paths = report.write(tmp_path / "out")
    names = {p.name for p in paths}
    assert {"report.md", "report.json", "loss_histograms.png", "roc_curves.png",
            "per_class_accuracy.png"} <= names
    for path in paths:
        assert path.stat().st_size > 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    for row in report.metrics:  # every metric has its line saying what is good
        assert row.good and row.good in markdown
    assert "![roc_curves](roc_curves.png)" in markdown
    text = report.to_text()
    assert "UA (1 - forget accuracy)" in text and "seconds per metric family" in text
    assert EvaluationReport.from_json((tmp_path / "out" / "report.json").read_text()) == report


# ------------------------------------------------------------------------------ CLI
def _cli(argv: list[str]) -> int:
    from expunge.cli import main

    return main(argv)


def test_cli_evaluate_writes_the_report(
    data: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = data
    store = tmp_path / "store"
    expunge.SISA(**FAST, n_shards=2, n_slices=2, store=store).fit(train).close()
    out = tmp_path / "report"
    code = _cli(["evaluate", "--store", str(store), "--forget-fraction", "0.05",
                 "--test-dataset", "digits", "--attacks", "loss,svc", "--out", str(out),
                 "--forget", "--quiet"])
    assert code == 0
    assert {"report.md", "report.json", "roc_curves.png"} <= {p.name for p in out.iterdir()}
    written = EvaluationReport.from_json((out / "report.json").read_text())
    assert written.status == "forgotten by evaluate" and written.n_forget == 30
    # the store recorded the request; evaluating the same ids again reads them from digits
    reopened = expunge.open(store)
    forgotten = reopened.forgotten_ids
    reopened.close()
    assert forgotten.size == 30
    code = _cli(["evaluate", "--store", str(store), "--forget-ids",
                 ",".join(map(str, forgotten.tolist())), "--attacks", "loss",
                 "--reference", "none", "--out", str(out)])
    assert code == 0
    assert EvaluationReport.from_json((out / "report.json").read_text()).status == "forgotten"
    assert "UA (1 - forget accuracy)" in capsys.readouterr().out


def test_cli_evaluate_errors_are_one_line(
    data: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = data
    store = tmp_path / "store"
    expunge.Retrain(**FAST, store=store).fit(train).close()
    assert _cli(["evaluate", "--store", str(store), "--forget-ids", "1,2",
                 "--forget-fraction", "0.1"]) == 2
    assert "exactly one of --forget-ids" in capsys.readouterr().err
    assert _cli(["evaluate", "--store", str(store), "--forget-ids", "1",
                 "--test-dataset", "adult", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expunge: error:") and err.count("\n") == 1


def test_cli_forget_class_and_seeds(data: Any, tmp_path: Path) -> None:
    train, _ = data
    store = tmp_path / "store"
    expunge.Retrain(**FAST, store=store).fit(train).close()
    out = tmp_path / "report"
    assert _cli(["evaluate", "--store", str(store), "--forget-class", "3", "--attacks", "loss",
                 "--seeds", "0,1", "--out", str(out), "--quiet"]) == 0
    written = EvaluationReport.from_json((out / "report.json").read_text())
    assert written.removed_class == 3 and written.seeds == [0, 1]
    assert written["TA"].model_std is not None
    reopened = expunge.open(store)  # seeds refit copies in memory: the store is untouched
    assert len(reopened.ledger) == 1
    reopened.close()


@pytest.mark.skipif("puma" not in expunge.available_strategies(), reason="PUMA not registered")
def test_approximate_strategy_reports_precompute_and_parameter_distance(
    data: Any, forget_ids: np.ndarray
) -> None:
    train, test = data
    cls = expunge.get_strategy("puma")
    model = cls(**cls._test_params()).fit(train)
    report = evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                      attacks=["loss"], forget=True)
    assert report.guarantee == "approximate"
    assert report["cost.precompute_seconds"].model > 0
    # one network on each side with the same architecture: the distance is defined
    assert report["dist.param_l2"].model > 0


def test_a_model_with_non_finite_outputs_is_refused_by_name(data: Any, forget_ids: np.ndarray,
                                                            monkeypatch: Any) -> None:
    # no attack can judge NaN probabilities (the SVC used to fail deep inside sklearn)
    import torch

    train, test = data
    model = expunge.Retrain(**FAST).fit(train)
    real = model.fitted_.predict_proba

    def broken(X: torch.Tensor) -> torch.Tensor:
        p = real(X).clone()
        p[0] = float("nan")
        return p

    monkeypatch.setattr(model.fitted_, "predict_proba", broken)
    with pytest.raises(DivergedError, match=r"The model \(retrain\) gives non-finite"):
        evaluate(model, test=test, forget_ids=forget_ids, reference=None,
                 attacks=CHEAP_ATTACKS)
