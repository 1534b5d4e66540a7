"""The Ray executor (issue 7) on a local 2-CPU cluster: same bits as serial, clean failures.

Needs the optional extra (``make test-ray`` installs it and runs ``pytest -m ray``); skipped
when ray is missing. One cluster for the module: starting Ray costs ~3-8 s on 2 cores.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import expunge
from expunge.data import IndexedDataset
from expunge.exceptions import WorkerError
from expunge.parallel._ray import SESSION

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

SMALL = dict(n_shards=3, n_slices=2, epochs=2, batch_size=16, lr=0.1, momentum=0.9, seed=5)

# Ray workers do not have tests/ on their path: send this module's functions by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    if started_here:
        ray.shutdown()
        SESSION.forget_task()


_FORWARDS = {"after_switch": 0}


class _DyingNet(nn.Module):
    def __init__(self, n_in: int, n_classes: int, kill_switch: str, driver_pid: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_classes)
        self.kill_switch, self.driver_pid = kill_switch, driver_pid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and os.getpid() != self.driver_pid and os.path.exists(self.kill_switch):
            _FORWARDS["after_switch"] += 1
            if _FORWARDS["after_switch"] >= 20:
                os._exit(17)
        return self.linear(x.flatten(1))


def _dying_linear(*, input_shape: tuple[int, ...], n_classes: int, kill_switch: str,
                  driver_pid: int) -> nn.Module:
    return _DyingNet(int(np.prod(input_shape)), n_classes, kill_switch, driver_pid)


def _first_slice_ids(model: Any, data: IndexedDataset) -> list[int]:
    shard, slice_ = model.partition(data.ids)
    return [int(data.ids[(shard == s) & (slice_ == 0)][0]) for s in range(model.n_shards)]


def _fingerprints(params: dict[str, Any], data: IndexedDataset, requests: list[list[int]],
                  runs: list[Any] | None = None, **runtime: Any) -> list[str]:
    model = expunge.SISA(**params, **runtime).fit(data)
    prints = [model.fingerprint()]
    if runs is not None:
        runs.append(model.fitted_.run_stats)
    for ids in requests:
        model.forget(ids)
        prints.append(model.fingerprint())
        if runs is not None:
            runs.append(model.fitted_.run_stats)
    model.close()
    return prints


@pytest.mark.parametrize("store", ["memory", "directory"])
def test_ray_equals_serial_and_process_after_fit_and_forgets(digits, tmp_path, store):
    train, _ = digits
    params = dict(SMALL, model="mlp", model_params={"hidden_sizes": [24]})
    requests = [_first_slice_ids(expunge.SISA(**params), train), [int(train.ids[10])],
                [int(i) for i in train.ids[300:320]]]
    location = tmp_path / "store" if store == "directory" else None
    serial = _fingerprints(params, train, requests)
    runs: list[Any] = []
    on_ray = _fingerprints(params, train, requests, runs, executor="ray", n_jobs=2,
                           store=location)
    assert runs[0] is not None and runs[0].executor == "ray" and runs[0].jobs == 6
    assert on_ray == serial
    if store == "memory":
        process = _fingerprints(params, train, requests, executor="process", n_jobs=2)
        assert process == serial


def test_ray_sends_a_lambda_model_by_value(digits):
    """Ray pickles with cloudpickle, so a lambda factory works there (not in a process pool)."""
    train, _ = digits
    data = train.select(train.ids[:400])
    params = dict(SMALL, model=lambda input_shape, n_classes: nn.Sequential(
        nn.Flatten(), nn.Linear(64, n_classes)))
    serial = expunge.SISA(**params).fit(data).fingerprint()
    assert expunge.SISA(**params, executor="ray", n_jobs=2).fit(data).fingerprint() == serial


def test_killed_ray_worker_fails_cleanly_and_the_store_stays_consistent(digits, tmp_path):
    train, _ = digits
    kill = tmp_path / "kill-switch"
    store = tmp_path / "store"
    params = dict(SMALL, model=_dying_linear,
                  model_params={"kill_switch": str(kill), "driver_pid": os.getpid()})
    model = expunge.SISA(**params, executor="ray", n_jobs=2, store=store).fit(train)
    fingerprint, entries, live = model.fingerprint(), len(model.ledger), model.store_.list_blobs()
    request = _first_slice_ids(model, train)
    kill.touch()
    with pytest.raises(WorkerError, match="Ray worker died"):
        model.forget(request)
    kill.unlink()
    assert (model.fingerprint(), len(model.ledger)) == (fingerprint, entries)
    model.close()
    reopened = expunge.open(store, model=_dying_linear, executor="ray", n_jobs=2)
    assert (reopened.fingerprint(), len(reopened.ledger)) == (fingerprint, entries)
    assert reopened.store_.list_blobs() == live
    reopened.forget(request)  # the retry works and is exact
    assert reopened.fingerprint() == expunge.SISA(**params).fit(
        train.drop(request)).fingerprint()
    reopened.close()
