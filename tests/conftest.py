"""Shared fixtures. Tests run under ``pytest -n 2``: one torch thread per worker, since two
intra-op threads per worker on a 2-core machine oversubscribe it (measured: 30x slower)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from expunge.data import IndexedDataset, load_dataset

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def digits() -> tuple[IndexedDataset, IndexedDataset]:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_digits(digits: tuple[IndexedDataset, IndexedDataset]) -> IndexedDataset:
    """300 training digits (ids kept), enough for every contract check in well under a second."""
    train, _ = digits
    return train.select(train.ids[:300])


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (the shared datasets live beside the checkout)")
    return SHARED
