"""The plan of an exact fit or forget: block plans, chain keys, checkpoint names, reuse.

A strategy describes *what* to train as a :class:`BlockPlan` per sub-model: the ids added
at each block and the epochs spent there. Each block's checkpoint is named by a **chain
key**, ``key_b = sha256(key_{b-1} | b | epochs_b | mode | sorted ids of block b)``, with
``key_{-1}`` derived from the strategy's recorded parameters and the sub-model number.
Equal keys mean equal training histories, hence bit-for-bit equal checkpoints.

:func:`plan_build` decides, before anything trains, which sub-models are reused as they
are, and from which block every other one trains (its first checkpoint missing from the
store); :class:`BuildPlan` then knows what the request will cost (:meth:`BuildPlan.stats`),
so a preview needs no training. Cost of planning: one chain of SHA-256 over the ids of
every block (a few ms for MNIST) and one file lookup per block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expunge._hashing import sha256_ids
from expunge.store import BlobAccess
from expunge.strategies.base import ForgetStats


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

    def passes(self, start: int = 0, stop: int | None = None) -> int:
        """Sample-passes of training blocks ``start..stop-1``: samples x epochs, summed."""
        stop = self.n_blocks if stop is None else stop
        return sum(len(self.training_ids(b)) * self.epochs[b] for b in range(start, stop))


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
    """The store name of sub-model ``submodel``'s checkpoint after ``block`` (chain ``key``)."""
    return f"ckpt/sub-{submodel:03d}/block-{block:03d}-{key[:32]}"


def checkpoint_names(submodel: int, keys: Sequence[str]) -> list[str]:
    """Every checkpoint of one sub-model's chain, in block order."""
    return [checkpoint_blob(submodel, b, key) for b, key in enumerate(keys)]


def first_missing(store: BlobAccess, submodel: int, keys: Sequence[str]) -> int:
    """First block whose checkpoint is not in the store (``len(keys)`` if none)."""
    for block, key in enumerate(keys):
        if not store.has_blob(checkpoint_blob(submodel, block, key)):
            return block
    return len(keys)


@dataclass(frozen=True)
class BuildPlan:
    """What a fit or a forget will train, decided before anything trains.

    Attributes:
        plans: one :class:`BlockPlan` per sub-model.
        keys: each sub-model's chain keys.
        starts: each sub-model's first block to train (``n_blocks``: none).
        reused: sub-models taken over from the previous model as they are (same keys,
            every checkpoint present): nothing is loaded for them.
    """

    plans: list[BlockPlan]
    keys: list[list[str]]
    starts: list[int]
    reused: frozenset[int]

    @property
    def todo(self) -> list[int]:
        """Sub-models to train or to load from their final checkpoint."""
        return [k for k in range(len(self.plans)) if k not in self.reused]

    @property
    def chains(self) -> list[int]:
        """Sub-models with at least one block to train."""
        return [k for k in self.todo if self.starts[k] < self.plans[k].n_blocks]

    def block_cost(self, k: int, block: int) -> float:
        """Expected cost of one block job: its sample-passes, plus one for the fixed costs."""
        plan = self.plans[k]
        return float(len(plan.training_ids(block)) * plan.epochs[block] + 1)

    def epochs_to_train(self) -> int:
        return sum(sum(self.plans[k].epochs[self.starts[k]:]) for k in self.chains)

    def stats(self) -> ForgetStats:
        """What the request reports: distinct samples retrained, sample-passes, sub-models
        retrained and each one's first retrained block."""
        distinct = passes = 0
        from_block: dict[str, int] = {}
        for k in self.chains:
            plan, start = self.plans[k], self.starts[k]
            passes += plan.passes(start)
            distinct += len(np.unique(np.concatenate(
                [plan.training_ids(b) for b in range(start, plan.n_blocks)])))
            from_block[str(k)] = start
        return ForgetStats(samples_retrained=distinct, sample_passes=passes,
                           submodels_retrained=tuple(self.chains),
                           details={"from_block": from_block})


def plan_build(plans: list[BlockPlan], context: str, store: BlobAccess,
               previous_keys: Sequence[Sequence[str]] | None) -> BuildPlan:
    """Chain keys and first missing checkpoint of every sub-model; which previous ones are
    reused (``previous_keys``: the chain keys of the model a forget starts from)."""
    keys = [chain_keys(context, k, plan) for k, plan in enumerate(plans)]
    starts = [first_missing(store, k, chain) for k, chain in enumerate(keys)]
    reused = frozenset(
        k for k, plan in enumerate(plans)
        if previous_keys is not None and starts[k] == plan.n_blocks
        and k < len(previous_keys) and list(previous_keys[k]) == keys[k]
    )
    return BuildPlan(plans, keys, starts, reused)
