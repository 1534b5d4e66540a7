"""Shared machinery of exact strategies: isolated sub-models trained in checkpointed blocks.

A strategy describes *what* to train as a :class:`BlockPlan` per sub-model: the ids added
at each block and the epochs spent there. This module does the rest, the same way for
Retrain (1 sub-model, 1 block), SISA (shards x slices) and ARCANE (classes x blocks):

* each block's checkpoint is named by a **chain key**,
  ``key_b = sha256(key_{b-1} | b | epochs_b | mode | sorted ids of block b)``, with
  ``key_{-1}`` derived from the strategy's parameters and the sub-model number. Equal keys
  mean equal training histories, hence bit-for-bit equal checkpoints;
* ``fit`` trains every block whose checkpoint is not in the store yet (so an interrupted fit
  resumes), and **``forget`` is the same operation on the retained data**: every block whose
  key did not change is reused, every sub-model is retrained from its first changed block,
  and every checkpoint whose key is no longer live, i.e. that saw a forgotten id, is purged.

History independence follows: ``fit(D).forget(F)`` runs exactly the computations of
``fit(D.drop(F))`` for every block whose content changed, starting from checkpoints that
``fit(D.drop(F))`` would also have produced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
import warnings
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge._hashing import derive_key, sha256_ids
from expunge._progress import Progress
from expunge.data._dataset import IndexedDataset
from expunge.data._transforms import transform_from_dict
from expunge.exceptions import InvalidParameterError, NondeterminismWarning, StoreError
from expunge.models import build_model, seeded_init
from expunge.store import Checkpoint, Store, pack, unpack
from expunge.strategies.base import FittedModel, ForgetStats, UnlearningStrategy
from expunge.strategies.exact._common import EXECUTOR_PARAMS
from expunge.training import (
    EpochKey,
    TrainConfig,
    batched_forward,
    cross_entropy_loss,
    make_optimizer,
    train_epochs,
)


# --------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class BlockPlan:
    """What one sub-model trains on: ids added per block, epochs per block.

    With ``cumulative=True`` block ``b`` trains on blocks ``0..b`` (SISA's slicing);
    otherwise on block ``b`` alone, starting from block ``b-1``'s state.
    """

    blocks: tuple[np.ndarray, ...]
    epochs: tuple[int, ...]
    cumulative: bool = True

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.epochs):
            raise ValueError("blocks and epochs must have the same length")

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def training_ids(self, block: int) -> np.ndarray:
        """Ids trained on at ``block`` (sorted)."""
        if self.cumulative:
            return np.sort(np.concatenate(self.blocks[: block + 1]))
        return np.sort(self.blocks[block])

    def all_ids(self) -> np.ndarray:
        return np.sort(np.concatenate(self.blocks)) if self.blocks else np.empty(0, np.int64)


def chain_keys(context: str, submodel: int, plan: BlockPlan) -> list[str]:
    """Content keys of each block's checkpoint (see the module docstring)."""
    prev = hashlib.sha256(f"{context}|submodel={submodel}|init".encode()).hexdigest()
    keys = []
    for block, (ids, epochs) in enumerate(zip(plan.blocks, plan.epochs)):
        prefix = f"{prev}|block={block}|epochs={epochs}|cumulative={plan.cumulative}|"
        prev = sha256_ids(np.sort(ids), prefix=prefix)
        keys.append(prev)
    return keys


def checkpoint_blob(submodel: int, block: int, key: str) -> str:
    return f"ckpt/sub-{submodel:03d}/block-{block:03d}-{key[:32]}"


# ------------------------------------------------------------------- fitted model
@dataclass
class Submodel:
    """One trained sub-model: its final module, extras and the chain of block keys."""

    index: int
    keys: list[str]
    module: nn.Module
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    n_trained: int = 0

    @property
    def blobs(self) -> list[str]:
        return [checkpoint_blob(self.index, b, k) for b, k in enumerate(self.keys)]


class ShardedModel(FittedModel):
    """Sub-models plus the strategy that aggregates them."""

    def __init__(self, strategy: ShardedStrategy, submodels: list[Submodel],
                 sample_passes: int = 0) -> None:
        self.strategy = strategy
        self.submodels = submodels
        self.sample_passes = sample_passes
        #: a subclass's own committed state (JSON) and the blobs it keeps alive
        self.extra_state: dict[str, Any] = {}
        self.extra_blobs: frozenset[str] = frozenset()

    def state(self) -> dict[str, Any]:
        return {"submodels": [{"keys": s.keys, "n_trained": s.n_trained} for s in self.submodels],
                **self.extra_state}

    def live_blobs(self) -> set[str]:
        return {blob for s in self.submodels for blob in s.blobs} | set(self.extra_blobs)

    def learned_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for s in self.submodels:
            for name, tensor in sorted(s.module.state_dict().items()):
                yield f"{s.index}/model/{name}", tensor
            for name, tensor in sorted(s.extras.items()):
                yield f"{s.index}/extra/{name}", tensor

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        return self.strategy._aggregate(self.submodels, X)


# --------------------------------------------------------------------------- engine
class ShardedStrategy(UnlearningStrategy):
    """Base of exact strategies built from isolated, block-checkpointed sub-models.

    Subclasses implement :meth:`_plans`; they may override :meth:`_new_module`,
    :meth:`_loss`, :meth:`_train_block`, :meth:`_finalize` and :meth:`_aggregate`.
    """

    guarantee = "exact"
    _runtime_params = UnlearningStrategy._runtime_params | EXECUTOR_PARAMS

    # parameters every sharded strategy has (set by subclass constructors)
    model: Any
    model_params: dict[str, Any] | None
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    seed: int

    # ---------------------------------------------------------------- hooks
    @abstractmethod
    def _plans(self, data: IndexedDataset) -> list[BlockPlan]:
        """One plan per sub-model for the (retained) ``data``; always the same length."""

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=float(self.lr),
            optimizer=self.optimizer,  # type: ignore[arg-type]  # validated by constraints
            momentum=float(self.momentum), weight_decay=float(self.weight_decay),
        )

    def _new_module(self, submodel: int, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """A freshly initialised module for ``submodel``; init keyed by (seed, submodel)."""
        seed = derive_key(self.seed, "init", submodel) >> 1
        return seeded_init(
            seed, lambda: build_model(self.model, input_shape, n_classes, self.model_params)
        )

    def _make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer | None:
        return make_optimizer(module, self.train_config())

    def _loss(
        self, submodel: int, module: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return cross_entropy_loss(module, x, y)

    def _train_block(
        self, submodel: int, block: int, module: nn.Module,
        optimizer: torch.optim.Optimizer | None, data: IndexedDataset, epochs: int,
        progress: Progress, task: int | None,
    ) -> None:
        """Train ``module`` in place on ``data`` for ``epochs`` epochs (default: SGD/Adam)."""
        assert optimizer is not None
        keys = [EpochKey(int(self.seed), submodel, block, e) for e in range(epochs)]
        train_epochs(
            module, optimizer, data.batches(), data.y, data.ids, config=self.train_config(),
            keys=keys,
            loss_fn=lambda m, x, y: self._loss(submodel, m, x, y),
            on_epoch=lambda: progress.advance(task),
        )

    def _finalize(
        self, submodel: int, module: nn.Module, data: IndexedDataset
    ) -> dict[str, torch.Tensor]:
        """Extra learned tensors computed after the last block (e.g. calibration)."""
        return {}

    def _submodel_proba(self, submodel: Submodel, X: torch.Tensor) -> torch.Tensor:
        return torch.softmax(batched_forward(submodel.module, X), dim=1)

    def _aggregate(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        """Mean of the sub-models' softmax outputs over sub-models that saw data."""
        active = [s for s in submodels if s.n_trained > 0] or list(submodels)
        return torch.stack([self._submodel_proba(s, X) for s in active]).mean(dim=0)

    # ------------------------------------------------------------ machinery
    def _context(self, data: IndexedDataset) -> str:
        recorded = json.dumps(self._recorded_params(), sort_keys=True, default=str)
        text = f"{self.name}|{recorded}|classes={data.n_classes}|shape={data.input_shape}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> ShardedModel:
        model, _ = self._build(data, store, progress, previous=None)
        return model

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[ShardedModel, ForgetStats]:
        assert isinstance(fitted, ShardedModel)
        return self._build(retained, store, progress, previous=fitted)

    def _build(
        self, data: IndexedDataset, store: Store, progress: Progress,
        previous: ShardedModel | None,
    ) -> tuple[ShardedModel, ForgetStats]:
        plans = self._plans(data)
        context = self._context(data)
        all_keys = [chain_keys(context, k, plan) for k, plan in enumerate(plans)]
        starts = [self._first_missing(store, k, keys) for k, keys in enumerate(all_keys)]
        total_epochs = sum(sum(plan.epochs[s:]) for plan, s in zip(plans, starts))
        task = progress.task(
            f"{type(self).__name__}: training {sum(s < p.n_blocks for p, s in zip(plans, starts))}"
            f" of {len(plans)} sub-models", total_epochs,
        )
        reused: dict[int, Submodel] = {}
        for k, (plan, keys, start) in enumerate(zip(plans, all_keys, starts)):
            reusable = previous is not None and start == plan.n_blocks and \
                k < len(previous.submodels) and previous.submodels[k].keys == keys
            if reusable:
                reused[k] = previous.submodels[k]  # type: ignore[union-attr]
        todo = [k for k in range(len(plans)) if k not in reused]
        trained = self._train_submodels(todo, plans, all_keys, starts, data, store, progress, task)
        submodels: list[Submodel] = []
        passes = 0
        distinct = 0
        retrained: list[int] = []
        from_block: dict[str, int] = {}
        for k, (plan, start) in enumerate(zip(plans, starts)):
            if k in reused:
                submodels.append(reused[k])
                continue
            submodel, sub_passes = trained[k]
            submodels.append(submodel)
            if start < plan.n_blocks:
                passes += sub_passes
                distinct += len(np.unique(np.concatenate(
                    [plan.training_ids(b) for b in range(start, plan.n_blocks)]
                ))) if plan.n_blocks else 0
                retrained.append(k)
                from_block[str(k)] = start
        stats = ForgetStats(
            samples_retrained=distinct, sample_passes=passes,
            submodels_retrained=tuple(retrained), details={"from_block": from_block},
        )
        return ShardedModel(self, submodels, sample_passes=passes), stats

    @staticmethod
    def _first_missing(store: Store, submodel: int, keys: list[str]) -> int:
        """First block whose checkpoint is not in the store (``len(keys)`` if none)."""
        for block, key in enumerate(keys):
            if not store.has_blob(checkpoint_blob(submodel, block, key)):
                return block
        return len(keys)

    # ------------------------------------------------------------ executors
    def _threads_per_job(self) -> int:
        """Torch intra-op threads every sub-model trains with, in every executor.

        Part of *what* is computed (CPU kernels may sum in another order with another
        thread count), hence the same for serial, process and Ray runs: the strategy's
        ``threads_per_job`` parameter (recorded in the manifest, not a runtime parameter).
        """
        threads = getattr(self, "threads_per_job", None)
        return 1 if threads is None else int(threads)

    def _train_submodels(
        self, todo: list[int], plans: list[BlockPlan], all_keys: list[list[str]],
        starts: list[int], data: IndexedDataset, store: Store, progress: Progress,
        task: int | None,
    ) -> dict[int, tuple[Submodel, int]]:
        """Train sub-models ``todo`` from their first missing block, on the executor.

        The serial path trains each sub-model straight through in this process. The other
        executors run one job per block (resuming from the previous block's checkpoint, as
        ``forget`` always does), so that workers share the last sub-models; the parent then
        loads each final checkpoint. Both give the same bits: the same computations, with
        the same thread count, from the same checkpoints.
        """
        from expunge.executors import make_executor, pinned_threads

        threads = self._threads_per_job()
        name = str(getattr(self, "executor", None) or "serial")
        chains = [k for k in todo if starts[k] < plans[k].n_blocks]
        if name == "ray":
            _require_ray()
        if name == "serial" or len(chains) < 2:
            # one chain is sequential: a pool could not speed it up, so it runs here
            with pinned_threads(threads):
                return {k: self._train_submodel(k, plans[k], all_keys[k], starts[k], data, store,
                                                progress, task) for k in todo}
        executor = make_executor(name, getattr(self, "n_jobs", None),
                                 getattr(self, "ray_address", None), threads)
        try:
            passes = self._train_blocks_on(executor, chains, plans, all_keys, starts, data,
                                           store, progress, task)
        finally:
            executor.close()
        # the final checkpoints, as _restore loads them
        return {k: (self._load_submodel(store, k, all_keys[k], data.input_shape,
                                        data.n_classes, len(plans[k].all_ids())),
                    passes.get(k, 0)) for k in todo}

    def _train_blocks_on(
        self, executor: Any, chains: list[int], plans: list[BlockPlan],
        all_keys: list[list[str]], starts: list[int], data: IndexedDataset, store: Store,
        progress: Progress, task: int | None,
    ) -> dict[int, int]:
        """Run every missing block of ``chains`` as a job on ``executor``; passes per chain."""
        from expunge.executors import manifest_digest_of, run_chains
        from expunge.store import DirectoryStore

        payload = self._worker_payload(executor)
        digest = hashlib.sha256(payload).hexdigest()
        directory = store.location if isinstance(store, DirectoryStore) else None
        manifest = manifest_digest_of(store.read_manifest() or {}) if directory else ""
        rows: dict[int, Any] = {}
        passes: dict[int, int] = dict.fromkeys(chains, 0)
        here, warned = _kernel_platform(), set()

        def make_job(k: int, block: int) -> tuple[Any, tuple[Any, ...]]:
            plan, keys = plans[k], all_keys[k]
            if k not in rows:  # this sub-model's rows only, sent once per sub-model
                # (in position order: the worker selects each block's ids from them, so
                # the order here does not matter, and a mask is faster than select)
                sub = data.where(np.isin(data.ids, plan.all_ids()))
                rows[k] = executor.share((sub.X, sub.y, sub.ids))
            start_blobs = {}
            if directory is None and block > 0:  # memory store: the parent passes it
                name = checkpoint_blob(k, block - 1, keys[block - 1])
                start_blobs[name] = store.read_blob(name)
            job = _BlockJob(digest, payload, k, plan, keys, block, data.n_classes,
                            directory, manifest, start_blobs, data.transform.to_dict())
            return _run_block_job, (job, rows[k])

        def on_done(k: int, block: int, result: _BlockResult) -> None:
            for name, (tensors, metadata) in result.blobs.items():
                store.write_blob(name, tensors, metadata)
            name = checkpoint_blob(k, block, all_keys[k][block])
            if not store.has_blob(name):
                raise StoreError(
                    f"A worker reported checkpoint {name} but the store {store.location!r} "
                    "does not have it: the store path is not shared with the workers."
                )
            passes[k] += result.passes
            progress.advance(task, plans[k].epochs[block])
            if result.platform != here and result.platform not in warned:
                warned.add(result.platform)
                warnings.warn(
                    f"A worker trained with {result.platform}, this process runs "
                    f"{here}: other kernels may give other bits, so fit and forget are no "
                    "longer bit-for-bit reproducible. Use nodes of one CPU type and one torch "
                    "version (see docs/parallel.md).", NondeterminismWarning, stacklevel=2)

        # workers read checkpoints without checking digests (they have no key): the ones the
        # chains resume from are committed, so this process checks them before any job runs
        for k in chains:
            if starts[k] > 0:
                store.check_blob(checkpoint_blob(k, starts[k] - 1, all_keys[k][starts[k] - 1]))
        costs = {k: [(b, float(len(plans[k].training_ids(b)) * plans[k].epochs[b] + 1))
                     for b in range(starts[k], plans[k].n_blocks)] for k in chains}
        run_chains(executor, costs, make_job, on_done)
        return passes

    def _worker_payload(self, executor: Any) -> bytes:
        """This strategy's parameters, serialized for workers (fitted state left out)."""
        clone = copy.copy(self)
        for attribute in ("store_", "fitted_", "data_", "_forgotten"):
            clone.__dict__.pop(attribute, None)
        main = sys.modules.get("__main__")
        if executor.name == "process" and not hasattr(main, "__file__"):
            for key, value in clone.get_params().items():
                if callable(value) and getattr(value, "__module__", None) == "__main__":
                    raise InvalidParameterError(
                        f"{key}={value!r} is defined in an interactive session, which worker "
                        "processes cannot import. Define it in a module (a .py file) and import "
                        "it, or use executor='serial' (or 'ray', which sends it by value)."
                    )
        try:
            return executor.dumps(clone)
        except Exception as err:
            culprit = next((f"{key}={value!r}" for key, value in vars(clone).items()
                            if not _pickles(executor, value)), "a parameter")
            raise InvalidParameterError(
                f"executor={executor.name!r} sends the strategy to worker processes, but "
                f"{culprit} cannot be pickled ({err}). Use a module-level function (def ...) "
                "instead of a lambda or a local function, or use executor='serial'."
            ) from err

    def _train_submodel(
        self, k: int, plan: BlockPlan, keys: list[str], start: int, data: IndexedDataset,
        store: Store, progress: Progress, task: int | None,
    ) -> tuple[Submodel, int]:
        """Train blocks ``start..`` of sub-model ``k`` (resuming from block ``start-1``)."""
        module, optimizer, extras = self._resume_submodel(
            k, plan, keys, start, data.input_shape, data.n_classes, store)
        extras, passes = self._train_blocks(k, plan, keys, module, optimizer, extras, start,
                                            plan.n_blocks, data, store, progress, task)
        module.eval()
        return Submodel(k, keys, module, extras, n_trained=len(plan.all_ids())), passes

    def _resume_submodel(
        self, k: int, plan: BlockPlan, keys: list[str], start: int,
        input_shape: tuple[int, ...], n_classes: int, store: Store,
    ) -> tuple[nn.Module, torch.optim.Optimizer | None, dict[str, torch.Tensor]]:
        """A fresh module and optimizer, loaded from block ``start-1``'s checkpoint if any."""
        module = self._new_module(k, input_shape, n_classes)
        optimizer = self._make_optimizer(module)
        extras: dict[str, torch.Tensor] = {}
        resume_from = min(start, plan.n_blocks) - 1  # last checkpoint that is still valid
        if resume_from >= 0:
            blob = checkpoint_blob(k, resume_from, keys[resume_from])
            checkpoint = unpack(*store.read_blob(blob))
            module.load_state_dict(checkpoint.model)
            if optimizer is not None and checkpoint.optimizer is not None:
                optimizer.load_state_dict(checkpoint.optimizer)
            extras = checkpoint.extras
        return module, optimizer, extras

    def _train_blocks(
        self, k: int, plan: BlockPlan, keys: list[str], module: nn.Module,
        optimizer: torch.optim.Optimizer | None, extras: dict[str, torch.Tensor], start: int,
        stop: int, data: IndexedDataset, store: Store, progress: Progress, task: int | None,
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Train blocks ``start..stop-1`` in place, checkpointing each; (extras, passes)."""
        passes = 0
        for block in range(start, stop):
            ids = plan.training_ids(block)
            self._train_block(k, block, module, optimizer, data.select(ids), plan.epochs[block],
                              progress, task)
            passes += len(ids) * plan.epochs[block]
            last = block == plan.n_blocks - 1
            extras = self._finalize(k, module, data.select(plan.all_ids())) if last else {}
            checkpoint = Checkpoint(
                model=module.state_dict(),
                optimizer=optimizer.state_dict() if optimizer is not None else None,
                extras=extras,
                # everything this state was computed from (earlier blocks included)
                ids_trained=np.unique(np.concatenate(plan.blocks[: block + 1])),
                info={"submodel": k, "block": block, "key": keys[block],
                      "epochs": plan.epochs[block], "n_trained": len(ids),
                      "rng": "keyed: derive_key(seed, 'order'|'model-rng', submodel, block, "
                             "epoch)"},
            )
            store.write_blob(checkpoint_blob(k, block, keys[block]), *pack(checkpoint))
        return extras, passes

    def _restore(self, state: dict[str, Any], store: Store) -> ShardedModel:
        manifest = store.read_manifest() or {}
        shape = tuple(manifest.get("dataset", {}).get("input_shape", ()))
        n_classes = int(manifest.get("dataset", {}).get("n_classes", 0))
        submodels = [self._load_submodel(store, k, list(entry["keys"]), shape, n_classes,
                                         int(entry["n_trained"]))
                     for k, entry in enumerate(state["submodels"])]
        return ShardedModel(self, submodels)

    def _load_submodel(self, store: Store, k: int, keys: list[str], input_shape: tuple[int, ...],
                       n_classes: int, n_trained: int) -> Submodel:
        """Sub-model ``k`` in eval mode, from its last block's checkpoint (fresh if none)."""
        module = self._new_module(k, input_shape, n_classes)
        extras: dict[str, torch.Tensor] = {}
        if keys:
            checkpoint = unpack(*store.read_blob(checkpoint_blob(k, len(keys) - 1, keys[-1])))
            module.load_state_dict(checkpoint.model)
            extras = checkpoint.extras
        module.eval()
        return Submodel(k, keys, module, extras, n_trained)


# ------------------------------------------------------------- jobs for workers
@dataclass
class _BlockJob:
    """What a worker needs to train one block of one sub-model (the data rows travel
    separately, as a top-level argument, so that Ray resolves its object-store handle)."""

    digest: str  # of ``payload``: workers unpickle each strategy once
    payload: bytes  # the strategy's parameters (see ShardedStrategy._worker_payload)
    submodel: int
    plan: BlockPlan
    keys: list[str]
    block: int
    n_classes: int
    store_path: str | None  # a directory store: read and write checkpoints there
    manifest_digest: str  # ... after checking it is the parent's store
    start_blobs: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]  # memory store
    transform: dict[str, Any] | None = None  # the data's input transform (its record)


@dataclass
class _BlockResult:
    passes: int
    # memory store: the checkpoint the worker wrote, for the parent to store
    blobs: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]
    seconds: float = 0.0  # spent in the worker on this job (for benchmarks)
    setup_seconds: float = 0.0  # of which: loading strategy, data and checkpoint
    platform: str = ""  # torch version and CPU kernel set the worker trained with


def _kernel_platform() -> str:
    """What decides which CPU kernels run: torch's version and the instruction set it uses."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return f"torch {torch.__version__}, {capability() if capability else 'unknown'} kernels"


def _run_block_job(job: _BlockJob, rows: tuple[Any, Any, np.ndarray]) -> _BlockResult:
    """Train block ``job.block`` of sub-model ``job.submodel`` in a worker."""
    from expunge._progress import NO_PROGRESS
    from expunge.executors import WorkerDirectoryStore, WorkerMemoryStore, load_cached

    started = time.perf_counter()
    strategy = load_cached(job.digest, job.payload)
    # arrays read from Ray's object store are read-only views: copy them (memcpy) so that
    # no hook can crash the worker by writing into shared memory
    X, y, ids = (np.array(a) if isinstance(a, np.ndarray) and not a.flags.writeable else a
                 for a in rows)
    data = IndexedDataset(X, y, ids, n_classes=job.n_classes,
                          transform=transform_from_dict(job.transform))
    store: Store
    if job.store_path is not None:
        store = WorkerDirectoryStore(job.store_path, job.manifest_digest)
    else:
        store = WorkerMemoryStore(job.start_blobs)
    k, plan, keys = job.submodel, job.plan, job.keys
    module, optimizer, extras = strategy._resume_submodel(
        k, plan, keys, job.block, data.input_shape, data.n_classes, store)
    setup = time.perf_counter() - started
    _, passes = strategy._train_blocks(k, plan, keys, module, optimizer, extras, job.block,
                                       job.block + 1, data, store, NO_PROGRESS, None)
    blobs = store.new_blobs() if isinstance(store, WorkerMemoryStore) else {}
    return _BlockResult(passes, blobs, time.perf_counter() - started, setup, _kernel_platform())


def _pickles(executor: Any, value: Any) -> bool:
    try:
        executor.dumps(value)
    except Exception:
        return False
    return True


def _require_ray() -> None:
    """Fail early, before any training, when executor='ray' but Ray is not installed."""
    from expunge.executors import _import_ray

    _import_ray()
