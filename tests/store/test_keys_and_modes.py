"""The per-store key (purpose-bound HMAC digests) and the modes store files are created with.

Claims: digests are keyed (two stores hash the same bytes differently; without the key
they cannot be recomputed) and bound to a purpose; the dataset fingerprint in the manifest
is keyed; every file a store creates gets ``0o666 & ~umask`` (folders ``0o777 & ~umask``),
not a fixed 0600, so a group can share a store; the database runs with secure_delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

import expunge
from expunge.store import StoreKey

PARAMS = dict(model="logreg", n_shards=2, n_slices=2, epochs=2, batch_size=16, lr=0.1,
              momentum=0.9, seed=0)


def test_digests_are_keyed_and_bound_to_a_purpose():
    a, b = StoreKey.generate(), StoreKey.generate()
    assert a.digest("blob", b"x") != b.digest("blob", b"x")  # another store, another digest
    assert a.digest("blob", b"x") != a.digest("dataset", b"x")  # another purpose, too
    assert a.digest("blob", b"x") == a.digest("blob", b"x")
    assert a.digest("blob", b"x") != hashlib.sha256(b"x").hexdigest()
    assert "secret" in repr(a) and a.to_bytes().hex() not in repr(a)
    with pytest.raises(ValueError):
        StoreKey(b"short")


def test_the_manifest_cannot_confirm_a_guessed_dataset(small_digits, tmp_path):
    strategy = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    recorded = manifest["dataset"]["hmac"]
    assert recorded != small_digits.fingerprint()  # the unsalted hash of the data is absent
    assert small_digits.fingerprint() not in (tmp_path / "s" / "manifest.json").read_text()
    assert recorded == strategy.store_.keyed_digest("dataset", small_digits.fingerprint())
    fit = strategy.ledger.entries()[0]
    assert fit.details["dataset_hmac"] == recorded
    strategy.close()


@pytest.mark.parametrize("umask", [0o007, 0o077, 0o022], ids=["007", "077", "022"])
def test_files_respect_the_umask(small_digits, tmp_path, umask):
    old = os.umask(umask)
    try:
        strategy = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits)
        strategy.forget([int(small_digits.ids[0])])
        strategy.close()
    finally:
        os.umask(old)
    root = tmp_path / "s"
    # keys/ holds the receipt signing key, private whatever the umask (docs/operations.md)
    private = root / "keys"
    assert stat.S_IMODE(private.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE((private / "receipt-signing-key.pem").stat().st_mode) == 0o600
    files = [p for p in root.rglob("*") if p.is_file() and private not in p.parents]
    assert {p.name for p in files} >= {"manifest.json", "expunge.sqlite", "secret.key",
                                       "write.lock", "read.lock"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    for p in [root, *(p for p in root.rglob("*") if p.is_dir() and p != private)]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask, p


def test_the_database_zeroes_deleted_content(small_digits, tmp_path):
    strategy = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits)
    assert strategy.store_._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    strategy.close()
