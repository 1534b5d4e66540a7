"""Replay audit: the evidence behind "exact" (``m.audit()``, ``expunge audit``).

An exact strategy's model is a deterministic function of the retained data and the recorded
parameters: ``fit(D).forget(F)`` is bit for bit ``fit(D \\ F)``. So anyone holding the
retained data can re-derive it. The audit does exactly that for the chosen sub-models:

1. it reads the retained training data from the store and checks that no id the ledger
   records as forgotten is in it;
2. a fresh strategy with the recorded parameters (no cached plans or selections) plans
   every sub-model on that data, and the chain keys it derives must be the ones committed:
   the same samples, in the same blocks, as the store claims;
3. each chosen sub-model is trained again from its initialisation into a scratch memory
   store, and every checkpoint on its chain (model, optimizer state, extras, ids trained
   on, metadata) is compared bit for bit with the store's.

A store whose checkpoints were altered, or trained on data the ledger says was forgotten,
or not derived from the retained data at all, fails. (A checkpoint whose bytes differ from
the digest committed for it fails already when it is read; the replay also catches what
digests cannot: checkpoints recorded honestly but computed wrongly, e.g. by a request
that skipped retraining.) Auditing ``k`` of ``S`` sub-models
drawn at random catches a single altered sub-model with probability ``k/S`` at ``k/S`` of
the cost of a fit: a cheap probabilistic audit, repeatable from its recorded seed.

Approximate strategies (PUMA, influence) make no replay claim: their report says so and
checks nothing. What the audit cannot see: a retained data set that was itself altered in
the store (the ledger's and the store's integrity hashes cover that), and another torch
version or CPU (the bitwise claim is stated for one; see docs/guarantees.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from expunge._progress import Progress
from expunge.exceptions import InvalidParameterError, StoreError, StoreIntegrityError
from expunge.strategies._replay import (
    committed_keys,
    fresh_instance,
    is_exact_engine,
    replay_plans,
    replay_submodel,
    tensors_equal,
)
from expunge.strategies._stored_data import read_training_data
from expunge.strategies.base import UnlearningStrategy
from expunge.strategies.exact.sharded import ShardedStrategy, checkpoint_names


@dataclass(frozen=True)
class AuditReport:
    """The outcome of a replay audit.

    Attributes:
        strategy, guarantee: what was audited.
        replayable: ``False`` for approximate strategies (nothing was checked).
        passed: every check matched (``None`` when not replayable).
        submodels_total: sub-models in the model; ``submodels_checked`` those replayed.
        checkpoints_checked / checkpoints_matched: checkpoints compared / equal bit for bit.
        mismatches: one line per failed check, naming the sub-model, block and what differs.
        sample_passes: training spent replaying.
        seconds: wall-clock time of the audit.
        seed: the seed of the random draw of sub-models (``None`` if none was drawn).
        detection_probability: chance that a single altered sub-model is among those
            checked (``len(submodels_checked) / submodels_total``).
        ledger_head: the ledger head the audited state was committed with.
        note: what the audit does and does not establish.
    """

    strategy: str
    guarantee: str
    replayable: bool
    passed: bool | None
    submodels_total: int
    submodels_checked: list[int]
    checkpoints_checked: int
    checkpoints_matched: int
    mismatches: list[str]
    sample_passes: int
    seconds: float
    seed: int | None
    detection_probability: float
    ledger_head: str
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choose(total: int, submodels: str | int | Iterable[int], seed: int | None
            ) -> tuple[list[int], int | None]:
    if isinstance(submodels, str):
        if submodels != "all":
            raise InvalidParameterError(
                f"submodels must be 'all', a count or a list of indices; got {submodels!r}.")
        return list(range(total)), None
    if isinstance(submodels, (int, np.integer)) and not isinstance(submodels, (bool, np.bool_)):
        count = int(submodels)
        if not 1 <= count <= total:
            raise InvalidParameterError(
                f"submodels={count} but the model has {total} sub-models: audit between 1 "
                f"and {total}, or 'all'.")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
        rng = np.random.default_rng(seed)
        return sorted(int(k) for k in rng.choice(total, size=count, replace=False)), seed
    if isinstance(submodels, bool):
        raise InvalidParameterError(
            f"submodels must be 'all', a count or a list of indices; got {submodels!r}.")
    given = [int(k) for k in submodels]
    chosen = sorted(set(given))
    if not chosen or any(not 0 <= k < total for k in chosen):
        raise InvalidParameterError(
            f"Sub-model indices must be in 0..{total - 1}; got {sorted(given)}.")
    return chosen, None


def _not_replayable(strategy: UnlearningStrategy, started: float) -> AuditReport:
    return AuditReport(
        strategy=strategy.name, guarantee=strategy.guarantee, replayable=False, passed=None,
        submodels_total=0, submodels_checked=[], checkpoints_checked=0, checkpoints_matched=0,
        mismatches=[], sample_passes=0, seconds=time.perf_counter() - started, seed=None,
        detection_probability=0.0, ledger_head=strategy.ledger.head,
        note=(f"{strategy.name} is approximate: its model is a patch, not a function of the "
              "retained data alone, so there is no replay guarantee to check. Judge it with "
              "expunge evaluate (against a retrained reference)."),
    )


def _compare(k: int, block: int, name: str, replayed: tuple[Any, Any],
             stored: tuple[Any, Any]) -> list[str]:
    """What differs between a replayed and a stored checkpoint blob (empty: identical)."""
    (r_tensors, r_meta), (s_tensors, s_meta) = replayed, stored
    problems = []
    if set(r_tensors) != set(s_tensors):
        missing = sorted(set(r_tensors) ^ set(s_tensors))[:3]
        problems.append(f"sub-model {k} block {block}: tensors differ in name ({missing})")
    for tensor_name in sorted(set(r_tensors) & set(s_tensors)):
        if not tensors_equal(r_tensors[tensor_name], s_tensors[tensor_name]):
            problems.append(f"sub-model {k} block {block}: {tensor_name} differs from the "
                            f"replay ({name})")
    if r_meta != s_meta:
        problems.append(f"sub-model {k} block {block}: metadata differs ({name})")
    return problems


def audit_strategy(strategy: UnlearningStrategy, submodels: str | int | Iterable[int] = "all",
                   *, seed: int | None = None) -> AuditReport:
    """Run the replay audit described in the module docstring on a fitted strategy."""
    started = time.perf_counter()
    if not is_exact_engine(strategy):
        return _not_replayable(strategy, started)
    assert isinstance(strategy, ShardedStrategy)
    store = strategy.store_
    state = store.read_state()
    if state is None:
        raise StoreError(f"The store {store.location!r} has no committed state to audit.")
    head = strategy.ledger.head
    keys_committed = committed_keys(state)
    chosen, seed = _choose(len(keys_committed), submodels, seed)
    mismatches: list[str] = []
    data, _ = read_training_data(store, state["data"])
    forgotten = np.array(sorted(strategy.ledger.forgotten()), dtype=np.int64)
    leaked = data.ids[np.isin(data.ids, forgotten)]
    if leaked.size:
        mismatches.append(f"the stored training data still holds forgotten ids "
                          f"{leaked[:10].tolist()}")
    fresh = fresh_instance(strategy)
    plans, keys = replay_plans(fresh, data)
    if len(plans) != len(keys_committed):
        raise StoreError(
            f"The store commits {len(keys_committed)} sub-models but its parameters give "
            f"{len(plans)} on the retained data: the store does not match its manifest.")
    progress = Progress(bool(getattr(strategy, "show_progress", False)))
    checked = matched = passes = 0
    with progress.running():
        task = progress.task(f"audit: replaying {len(chosen)} of {len(plans)} sub-models",
                             sum(sum(plans[k].epochs) for k in chosen))
        for k in chosen:
            if keys[k] != keys_committed[k]:
                mismatches.append(
                    f"sub-model {k}: the store's chain keys are not those of the retained data "
                    "(its samples, blocks or order differ from what the parameters give)")
            scratch, spent = replay_submodel(fresh, k, plans[k], keys[k], data, progress, task)
            passes += spent
            for block, name in enumerate(checkpoint_names(k, keys[k])):
                checked += 1
                if not store.has_blob(name):
                    mismatches.append(f"sub-model {k} block {block}: checkpoint {name} is "
                                      "missing from the store")
                    continue
                try:
                    stored = store.read_blob(name)
                except StoreIntegrityError as err:  # not even the bytes the commit recorded
                    mismatches.append(f"sub-model {k} block {block}: {err}")
                    continue
                problems = _compare(k, block, name, scratch.read_blob(name), stored)
                mismatches.extend(problems)
                matched += not problems
    if strategy.ledger.head != head:
        raise StoreError("The store changed during the audit (another request committed); "
                         "run it again.")
    return AuditReport(
        strategy=strategy.name, guarantee=strategy.guarantee, replayable=True,
        passed=not mismatches, submodels_total=len(plans), submodels_checked=chosen,
        checkpoints_checked=checked, checkpoints_matched=matched, mismatches=mismatches,
        sample_passes=passes, seconds=time.perf_counter() - started, seed=seed,
        detection_probability=len(chosen) / max(len(plans), 1), ledger_head=head,
        note=("Replayed from scratch on the retained data with the recorded parameters; "
              "bitwise equality holds on the same torch version and CPU type "
              "(docs/guarantees.md)."),
    )
