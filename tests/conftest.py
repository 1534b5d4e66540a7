"""Shared fixtures. Tests run under ``pytest -n 2``: one torch thread per worker, since two
intra-op threads per worker on a 2-core machine oversubscribe it (measured: 30x slower)."""

from __future__ import annotations

import contextlib
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


@pytest.fixture(autouse=True)
def _every_exact_request_matches_its_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preview every request an exact strategy makes anywhere in the suite, and check that
    the request reports exactly what its preview predicted (issue 17's target: "preview
    equals the real sample_passes for every exact request in the suite")."""
    from expunge.exceptions import ExpungeError
    from expunge.operations.preview import preview_forget
    from expunge.strategies._replay import is_exact_engine
    from expunge.strategies.base import UnlearningStrategy

    real = UnlearningStrategy._apply_forget

    def checked(self, ids, *, tag, timeout=None, details=None):  # type: ignore[no-untyped-def]
        if not (self.is_fitted and is_exact_engine(self)):
            return real(self, ids, tag=tag, timeout=timeout, details=details)
        # preview and request under one hold of the store's lock: the same state for both
        with self.locked(timeout=timeout):
            predicted = None
            # an invalid request raises in the request itself, and changes nothing
            with contextlib.suppress(ExpungeError):
                predicted = preview_forget(self, self.validate_request(
                    ids() if callable(ids) else ids))
            report = real(self, ids, tag=tag, timeout=timeout, details=details)
        if predicted is not None:
            assert (predicted.sample_passes, predicted.samples_retrained,
                    predicted.submodels_retrained, predicted.purged) == (
                report.sample_passes, report.samples_retrained,
                report.submodels_retrained, report.purged), "preview != request"
        return report

    monkeypatch.setattr(UnlearningStrategy, "_apply_forget", checked)


def _readable_contents(path: Path) -> list[bytes]:
    """A file's bytes and, for a zstd frame (the stored training data is compressed),
    what it decompresses to: what anyone reading the file can see."""
    import zstandard

    from expunge.store._blobs import ZSTD_MAGIC

    data = path.read_bytes()
    if data[:4] == ZSTD_MAGIC:
        return [data, zstandard.ZstdDecompressor().decompress(data)]
    return [data]


@pytest.fixture
def readable_contents():
    """``path -> [bytes, ...]``: a file's bytes, and a compressed blob's content too, for
    checks that something never reaches the disk (they must not pass because the bytes
    are compressed)."""
    return _readable_contents
