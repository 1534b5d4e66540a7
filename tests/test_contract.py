"""The contract every registered strategy meets (scikit-learn's check_estimator, ours).

Each strategy supplies tiny parameters through ``_test_params()``; every check below runs
for every name in ``available_strategies()``, so a new strategy is tested the moment it
registers.
"""

from __future__ import annotations

import numpy as np
import pytest

import expunge
from expunge.data import IndexedDataset
from expunge.exceptions import (
    AlreadyForgottenError,
    ExpungeError,
    InvalidRequestError,
    NotFittedError,
    StoreMismatchError,
    UnknownSampleError,
)

#: the full training recipe (issue 15), run through the whole contract as its own variant
RECIPE = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "lr_schedule": "onecycle",
          "warmup": 0.2, "label_smoothing": 0.05, "max_grad_norm": 1.0, "augment": "crop+flip",
          "precision": "bf16"}
NAMES = [*expunge.available_strategies(), "retrain+recipe", "sisa+recipe"]


def make(name: str, **overrides):
    base, _, variant = name.partition("+")
    cls = expunge.get_strategy(base)
    return cls(**{**cls._test_params(), **(RECIPE if variant else {}), **overrides})


def snapshot(strategy, data: IndexedDataset):
    """Everything a rejected request must leave unchanged."""
    return (
        strategy.fingerprint(),
        len(strategy.ledger),
        strategy.ledger.head,
        strategy.training_data.ids.tolist(),
        sorted(strategy.store_.list_blobs()),
        strategy.predict_proba(data.X[:20]).numpy().tobytes(),
    )


def test_registry_lists_builtin_strategies():
    assert {"retrain", "sisa"} <= set(expunge.available_strategies())
    with pytest.raises(expunge.exceptions.UnknownStrategyError, match="'nope'.*Available: "):
        expunge.get_strategy("nope")


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_predicts(name, small_digits):
    strategy = make(name)
    assert strategy.fit(small_digits) is strategy
    proba = strategy.predict_proba(small_digits.X[:10])
    assert proba.shape == (10, small_digits.n_classes)
    assert np.allclose(proba.sum(dim=1).numpy(), 1.0, atol=1e-5)
    assert 0.0 <= strategy.score(small_digits) <= 1.0
    assert len(strategy.ledger) == 1 and strategy.ledger.entries()[0].kind == "fit"
    assert strategy.ledger.entries()[0].guarantee == strategy.guarantee


@pytest.mark.parametrize("name", NAMES)
def test_forget_before_fit_fails_cleanly(name):
    strategy = make(name)
    with pytest.raises(NotFittedError, match="not fitted yet.*Call 'fit' before 'forget'"):
        strategy.forget([1])


@pytest.mark.parametrize("name", NAMES)
def test_bad_requests_raise_and_change_nothing(name, small_digits, tmp_path):
    strategy = make(name, store=tmp_path / "s").fit(small_digits)
    first = int(small_digits.ids[0])
    strategy.forget([first])
    before = snapshot(strategy, small_digits)
    bad = [
        ([], InvalidRequestError, "empty"),
        ([99_999_999], UnknownSampleError, "99999999"),
        ([first], AlreadyForgottenError, rf"\[{first}\].*already forgotten by request"),
        ([1.5], InvalidRequestError, "1.5"),
        (["7"], InvalidRequestError, "must be integers"),
        ([True], InvalidRequestError, "True"),
        ([3, 3], InvalidRequestError, r"\[3\] appear more than once"),
        ([5, 99_999_998], UnknownSampleError, "99999998"),
    ]
    for ids, error, message in bad:
        with pytest.raises(error, match=message) as caught:
            strategy.forget(ids)
        assert isinstance(caught.value, ExpungeError)
        assert snapshot(strategy, small_digits) == before, f"state changed after {ids!r}"
    assert strategy.verify() == 2


@pytest.mark.parametrize("name", NAMES)
def test_one_ledger_row_per_request(name, small_digits):
    strategy = make(name).fit(small_digits)
    ids = small_digits.ids
    r1 = strategy.forget([int(ids[1])])
    r2 = strategy.forget([int(ids[2]), int(ids[3])], tag="ticket-7")
    entries = strategy.ledger.entries()
    assert [e.kind for e in entries] == ["fit", "forget", "forget"]
    assert entries[1].ids == [int(ids[1])] and entries[2].ids == sorted([int(ids[2]), int(ids[3])])
    assert entries[2].details["tag"] == "ticket-7"
    assert (r1.seq, r2.seq) == (2, 3)
    assert entries[2].fingerprint_before == entries[1].fingerprint_after
    assert entries[2].fingerprint_after == strategy.fingerprint()
    assert r2.guarantee == entries[2].guarantee
    assert strategy.verify() == 3
    assert set(strategy.forgotten_ids.tolist()) == {int(ids[1]), int(ids[2]), int(ids[3])}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_fingerprint_other_seed_differs(name, small_digits):
    a = make(name).fit(small_digits).fingerprint()
    b = make(name).fit(small_digits).fingerprint()
    c = make(name, seed=1).fit(small_digits).fingerprint()
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", NAMES)
def test_store_reopen_round_trip(name, small_digits, tmp_path):
    path = tmp_path / "store"
    strategy = make(name, store=path).fit(small_digits)
    strategy.forget([int(small_digits.ids[4])])
    fingerprint, proba = strategy.fingerprint(), strategy.predict_proba(small_digits.X[:30])
    strategy.close()
    reopened = expunge.open(path)
    assert type(reopened) is type(strategy)
    assert reopened.fingerprint() == fingerprint
    assert np.array_equal(reopened.predict_proba(small_digits.X[:30]).numpy(), proba.numpy())
    assert len(reopened.ledger) == 2 and reopened.verify() == 2
    with pytest.raises(AlreadyForgottenError):
        reopened.forget([int(small_digits.ids[4])])
    reopened.forget([int(small_digits.ids[5])])
    assert reopened.verify() == 3
    reopened.close()


@pytest.mark.parametrize("name", NAMES)
def test_store_mismatch_refused(name, small_digits, tmp_path):
    path = tmp_path / "store"
    make(name, store=path).fit(small_digits).close()
    with pytest.raises(StoreMismatchError, match="seed=0.*seed=5"):
        make(name, store=path, seed=5).fit(small_digits)
    with pytest.raises(StoreMismatchError, match="other data"):
        make(name, store=path).fit(small_digits.drop(small_digits.ids[:3]))


@pytest.mark.parametrize(
    "name", [n for n in NAMES if expunge.get_strategy(n.partition("+")[0]).guarantee == "exact"]
)
def test_exact_strategies_are_history_independent(name, small_digits):
    ids = small_digits.ids
    requests = [[int(ids[0])], [int(ids[10]), int(ids[200])], [int(ids[299])]]
    strategy = make(name).fit(small_digits)
    dropped: list[int] = []
    for request in requests:
        strategy.forget(request)
        dropped += request
        twin = make(name).fit(small_digits.drop(dropped))
        assert strategy.fingerprint() == twin.fingerprint()
        assert np.array_equal(strategy.predict_proba(small_digits.X).numpy(),
                              twin.predict_proba(small_digits.X).numpy())


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("name", NAMES)
def test_get_params_clone_set_params_round_trip(name, small_digits):
    """scikit-learn's semantics: clone() is unfitted with equal parameters, set_params
    returns self and sets by name, unknown names and (once fitted) recorded parameters are
    refused with nothing changed, and a clone fits to the same bits."""
    strategy = make(name)
    params = strategy.get_params()
    assert set(params) == set(type(strategy)().get_params())  # every param has a default
    twin = strategy.clone()
    assert type(twin) is type(strategy) and twin is not strategy
    assert repr(twin) == repr(strategy) and not twin.is_fitted
    assert type(strategy)(**params).get_params().keys() == params.keys()
    assert twin.set_params(show_progress=False) is twin
    with pytest.raises(expunge.exceptions.InvalidParameterError, match="no_such_param"):
        twin.set_params(seed=3, no_such_param=1)
    assert twin.seed == strategy.seed  # nothing set
    strategy.fit(small_digits)
    clone = strategy.clone()
    assert not clone.is_fitted and clone.get_params().keys() == params.keys()
    assert clone.fit(small_digits).fingerprint() == strategy.fingerprint()
    runtime = type(strategy).runtime_param_names()
    assert {"store", "show_progress"} <= runtime
    assert runtime.isdisjoint(strategy.recorded_params())
    with pytest.raises(expunge.exceptions.InvalidParameterError, match="seed=0.*clone"):
        strategy.set_params(seed=strategy.seed + 1)
    assert strategy.seed == params["seed"]
    assert strategy.set_params(show_progress=False, seed=params["seed"]) is strategy
    assert clone.clone().set_params(seed=params["seed"] + 1).fit(small_digits).fingerprint() \
        != strategy.fingerprint()


#: what ``UnlearningStrategy._install`` sets on a fitted strategy: its only instance state
#: besides the constructor's (caches belong to the fitted model or the store)
INSTALLED = {"store_", "data_", "fitted_", "_data_positions", "_forgotten", "_head",
             "_subject_hashes"}


@pytest.mark.parametrize("name", NAMES)
def test_requests_keep_no_cache_on_the_strategy(name, small_digits, tmp_path):
    strategy = make(name, store=tmp_path / "s")
    constructed = dict(vars(strategy))
    strategy.fit(small_digits)
    assert set(vars(strategy)) - set(constructed) == INSTALLED
    strategy.forget([int(small_digits.ids[3]), int(small_digits.ids[250])])
    assert set(vars(strategy)) - set(constructed) == INSTALLED
    assert {k: v for k, v in vars(strategy).items() if k in constructed}.keys() == \
        constructed.keys()
    strategy.close()


# --------------------------------------------------------------- on disk after forget
def _files_holding(root, needles, contents):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and any(n in content for content in contents(p)
                                         for n in needles))


@pytest.mark.parametrize("name", NAMES)
def test_nothing_forgotten_stays_on_disk(name, small_digits, tmp_path, readable_contents):
    """After forget, no file of the store holds a forgotten sample's input row, every file
    the request made stale is gone, and an exact strategy's store holds exactly the model
    files a fit without those samples writes."""
    path = tmp_path / "store"
    X = small_digits.X.numpy()
    # ids whose rows occur once in the data: their bytes can only come from them
    unique = [i for i in range(len(X)) if sum(np.array_equal(X[i], x) for x in X) == 1]
    forgotten = [int(small_digits.ids[i]) for i in (unique[0], unique[len(unique) // 2])]
    rows = [X[small_digits.ids.tolist().index(i)].tobytes() for i in forgotten]
    strategy = make(name, store=path).fit(small_digits)
    assert _files_holding(path, rows, readable_contents), \
        "the check reads the stored data (it can fail)"
    before = set(strategy.store_.list_blobs())
    report = strategy.forget(forgotten)
    assert _files_holding(path, rows, readable_contents) == []
    after = set(strategy.store_.list_blobs())
    assert report.purged and set(report.purged) <= before and after.isdisjoint(report.purged)
    files = {p.relative_to(path / "blobs").with_suffix("").as_posix()
             for p in (path / "blobs").rglob("*") if p.is_file()}
    assert files == after  # nothing on disk outside the listed blobs
    if strategy.guarantee == "exact":
        twin = make(name, store=tmp_path / "twin").fit(small_digits.drop(forgotten))
        model = {b for b in after if not b.startswith(("data/", "cache/"))}
        assert model == {b for b in twin.store_.list_blobs()
                         if not b.startswith(("data/", "cache/"))}
        twin.close()
    strategy.close()


# ---------------------------------------------------------------------- public names
PUBLIC_PACKAGES = ["expunge", "expunge.data", "expunge.models", "expunge.store",
                   "expunge.parallel", "expunge.strategies", "expunge.evaluation",
                   "expunge.evaluation.attacks", "expunge.bench", "expunge.exceptions",
                   "expunge.training"]


@pytest.mark.parametrize("module_name", PUBLIC_PACKAGES)
def test_public_all_lists_exist_and_are_public(module_name):
    import importlib

    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    assert names, f"{module_name} declares no __all__"
    assert len(names) == len(set(names))
    missing = [n for n in names if not hasattr(module, n)]
    assert missing == [], f"{module_name}.__all__ lists names it does not define"
    assert [n for n in names if n.startswith("_") and n != "__version__"] == []


def test_every_registered_strategy_is_public():
    """Each registered class is exported by ``expunge`` or by a public package above its
    module (``expunge.strategies.approximate.baselines``), through that package's __all__."""
    import importlib

    for name in expunge.available_strategies():
        cls = expunge.get_strategy(name)
        parts = cls.__module__.split(".")
        packages = [".".join(parts[:i]) for i in range(1, len(parts))]
        exporters = [p for p in packages
                     if cls.__name__ in getattr(importlib.import_module(p), "__all__", ())
                     and getattr(importlib.import_module(p), cls.__name__) is cls]
        assert exporters, f"no package above {cls.__module__} exports {cls.__name__}"


# ---------------------------------------------------------------------- registry
def test_register_strategy_refuses_bad_classes_with_expunge_errors():
    from expunge.exceptions import StrategyRegistrationError
    from expunge.strategies import Retrain, UnlearningStrategy, register_strategy

    class NoName(Retrain):
        pass

    class Taken(Retrain):
        name = "sisa"

    class Abstract(UnlearningStrategy):
        name = "abstract_one"
        guarantee = "exact"

    class NoGuarantee(Retrain):
        name = "no_guarantee"
        guarantee = "perhaps"  # type: ignore[assignment]

    cases = [(NoName, "needs its own registry name"), (Taken, "'sisa' is already registered"),
             (Abstract, "does not implement _fit, _forget, _restore"),
             (NoGuarantee, "'exact', 'certified', 'approximate'; got 'perhaps'"),
             (dict, "subclass of UnlearningStrategy")]
    before = expunge.available_strategies()
    for cls, message in cases:
        with pytest.raises(StrategyRegistrationError, match=message) as caught:
            register_strategy(cls)
        assert isinstance(caught.value, ExpungeError)
        assert expunge.available_strategies() == before  # nothing registered
