"""Block training: the hooks an exact strategy overrides, and the loop that runs them.

The same functions train a block in the calling process (the serial path) and in a worker
of a process pool or a Ray cluster (:func:`run_block_job`), so a block computes the same
bits wherever it runs: a fresh module and optimizer from the strategy's hooks, loaded from
the previous block's checkpoint (which holds the model, the optimizer state and nothing
random), trained by the strategy's ``_train_block`` with keyed randomness, then
checkpointed under its chain key. This module sits below the engine's dispatch: a worker
enters here and never goes back up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from expunge._progress import NO_PROGRESS, Progress
from expunge.data import IndexedDataset, transform_from_dict
from expunge.store import (
    BlobAccess,
    Checkpoint,
    WorkerDirectoryStore,
    WorkerMemoryStore,
    pack,
    unpack,
)
from expunge.strategies._recipe import TrainingRecipe
from expunge.strategies.exact._model import Submodel
from expunge.strategies.exact._plan import BlockPlan, checkpoint_blob
from expunge.training import EpochKey, cross_entropy_loss, make_optimizer, train_epochs

Blobs = dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]


class BlockHooks(TrainingRecipe):
    """The per-block hooks of the exact engine, with their defaults (the shared SGD loop).

    A strategy may override :meth:`_new_module`, :meth:`_make_optimizer`, :meth:`_loss`,
    :meth:`_train_block` and :meth:`_finalize`; they run in workers too, on a copy of the
    strategy's parameters, so they must depend on nothing but their arguments and those
    parameters.
    """

    if TYPE_CHECKING:  # the strategy's (UnlearningStrategy.get_params), for type checkers
        def get_params(self) -> dict[str, Any]: ...

    def _new_module(self, submodel: int, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """A freshly initialised module for ``submodel``; init keyed by (seed, submodel)."""
        return self.initial_network(input_shape, n_classes, submodel)

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


# ------------------------------------------------------------------ the block loop
def resume_submodel(
    hooks: BlockHooks, k: int, plan: BlockPlan, keys: list[str], start: int,
    input_shape: tuple[int, ...], n_classes: int, store: BlobAccess,
) -> tuple[nn.Module, torch.optim.Optimizer | None, dict[str, torch.Tensor]]:
    """A fresh module and optimizer, loaded from block ``start-1``'s checkpoint if any."""
    module = hooks._new_module(k, input_shape, n_classes)
    optimizer = hooks._make_optimizer(module)
    extras: dict[str, torch.Tensor] = {}
    resume_from = min(start, plan.n_blocks) - 1  # last checkpoint that is still valid
    if resume_from >= 0:
        checkpoint = unpack(*store.read_blob(checkpoint_blob(k, resume_from, keys[resume_from])))
        module.load_state_dict(checkpoint.model)
        if optimizer is not None and checkpoint.optimizer is not None:
            optimizer.load_state_dict(checkpoint.optimizer)
        extras = checkpoint.extras
    return module, optimizer, extras


def train_blocks(
    hooks: BlockHooks, k: int, plan: BlockPlan, keys: list[str], module: nn.Module,
    optimizer: torch.optim.Optimizer | None, extras: dict[str, torch.Tensor], start: int,
    stop: int, data: IndexedDataset, store: BlobAccess, progress: Progress, task: int | None,
) -> dict[str, torch.Tensor]:
    """Train blocks ``start..stop-1`` of sub-model ``k`` in place, checkpointing each.

    ``data`` holds at least the sub-model's rows. Returns the extras of the last block
    trained (``_finalize``'s tensors after the plan's last block). Cost:
    ``plan.passes(start, stop)`` sample-passes.
    """
    for block in range(start, stop):
        ids = plan.training_ids(block)
        hooks._train_block(k, block, module, optimizer, data.select(ids), plan.epochs[block],
                           progress, task)
        last = block == plan.n_blocks - 1
        extras = hooks._finalize(k, module, data.select(plan.all_ids())) if last else {}
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
    return extras


def train_submodel(
    hooks: BlockHooks, k: int, plan: BlockPlan, keys: list[str], start: int,
    data: IndexedDataset, store: BlobAccess, progress: Progress, task: int | None,
) -> Submodel:
    """Sub-model ``k`` trained from block ``start`` (resuming from block ``start-1``)."""
    module, optimizer, extras = resume_submodel(hooks, k, plan, keys, start, data.input_shape,
                                                data.n_classes, store)
    extras = train_blocks(hooks, k, plan, keys, module, optimizer, extras, start,
                          plan.n_blocks, data, store, progress, task)
    module.eval()
    return Submodel(k, keys, module, extras, n_trained=len(plan.all_ids()))


def load_submodel(hooks: BlockHooks, store: BlobAccess, k: int, keys: list[str],
                  input_shape: tuple[int, ...], n_classes: int, n_trained: int) -> Submodel:
    """Sub-model ``k`` in eval mode, from its last block's checkpoint (fresh if none)."""
    module = hooks._new_module(k, input_shape, n_classes)
    extras: dict[str, torch.Tensor] = {}
    if keys:
        checkpoint = unpack(*store.read_blob(checkpoint_blob(k, len(keys) - 1, keys[-1])))
        module.load_state_dict(checkpoint.model)
        extras = checkpoint.extras
    module.eval()
    return Submodel(k, keys, module, extras, n_trained)


# ----------------------------------------------------------------- one block, anywhere
@dataclass
class BlockJob:
    """What a worker needs to train one block of one sub-model, besides the strategy (sent
    once per worker) and the sub-model's rows (a top-level argument, so that Ray resolves
    its object-store handle)."""

    submodel: int
    plan: BlockPlan
    keys: list[str]
    block: int
    n_classes: int
    store_path: str | None  # a directory store: read and write checkpoints there
    manifest_digest: str  # ... after checking it is the calling process's store
    start_blobs: Blobs  # memory store, first job of a chain: the checkpoint it resumes from
    transform: dict[str, Any] | None = None  # the data's input transform (its record)


@dataclass
class BlockResult:
    #: memory store: the checkpoint the worker wrote, for the calling process to store
    #: (and for the next block of the chain to resume from)
    blobs: Blobs
    setup_seconds: float = 0.0  # loading data and checkpoint in the worker
    platform: str = ""  # torch version and CPU kernel set the worker trained with


def kernel_platform() -> str:
    """What decides which CPU kernels run: torch's version and the instruction set it uses."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return f"torch {torch.__version__}, {capability() if capability else 'unknown'} kernels"


def run_block_job(hooks: BlockHooks, job: BlockJob, rows: tuple[Any, Any, np.ndarray],
                  previous: BlockResult | None) -> BlockResult:
    """Train block ``job.block`` of sub-model ``job.submodel`` (in a worker).

    ``previous`` is the result of the chain's previous block (the scheduler's pipeline):
    for an in-memory store, the checkpoint this block resumes from.
    """
    started = time.perf_counter()
    # arrays read from Ray's object store are read-only views: copy them (memcpy) so that
    # no hook can crash the worker by writing into shared memory
    X, y, ids = (np.array(a) if isinstance(a, np.ndarray) and not a.flags.writeable else a
                 for a in rows)
    data = IndexedDataset(X, y, ids, n_classes=job.n_classes,
                          transform=transform_from_dict(job.transform))
    store: WorkerDirectoryStore | WorkerMemoryStore
    if job.store_path is not None:
        store = WorkerDirectoryStore(job.store_path, job.manifest_digest)
    else:
        store = WorkerMemoryStore(previous.blobs if previous is not None else job.start_blobs)
    k, plan, keys = job.submodel, job.plan, job.keys
    module, optimizer, extras = resume_submodel(hooks, k, plan, keys, job.block,
                                                data.input_shape, data.n_classes, store)
    setup = time.perf_counter() - started
    train_blocks(hooks, k, plan, keys, module, optimizer, extras, job.block, job.block + 1,
                 data, store, NO_PROGRESS, None)
    blobs = store.new_blobs() if isinstance(store, WorkerMemoryStore) else {}
    return BlockResult(blobs, setup, kernel_platform())
