"""The deletion ledger: hash chain, tamper detection, durability order."""

from __future__ import annotations

import sqlite3

import pytest

import expunge
from expunge.cli import main
from expunge.exceptions import LedgerIntegrityError
from expunge.store._integrity import StoreKey, head_mac
from expunge.store._ledger import GENESIS, chain_hash

PARAMS = dict(model="logreg", epochs=2, batch_size=32, lr=0.1, seed=0)


@pytest.fixture
def store_with_requests(small_digits, tmp_path):
    path = tmp_path / "r"
    strategy = expunge.Retrain(**PARAMS, store=path).fit(small_digits)
    for i in range(3):
        strategy.forget([int(small_digits.ids[i])], tag=f"t{i}")
    strategy.close()
    return path


def tamper(path, sql, *args):
    db = sqlite3.connect(path / "expunge.sqlite")
    db.execute(sql, args)
    db.commit()
    db.close()


def test_chain_links_every_entry(store_with_requests):
    strategy = expunge.open(store_with_requests)
    entries = strategy.ledger.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    # the chain starts at the store's own genesis (a hash of its id), not a shared constant
    assert entries[0].prev_hash == strategy.ledger.genesis != GENESIS
    for prev, entry in zip(entries, entries[1:]):
        assert entry.prev_hash == prev.hash
    assert strategy.ledger.head == entries[-1].hash
    assert strategy.verify() == 4
    strategy.close()


@pytest.mark.parametrize(
    "sql, message",
    [
        ("UPDATE ledger SET ids = '[42]' WHERE seq = 3", "entry 3 .* was modified"),
        ("UPDATE ledger SET seconds = 0.001 WHERE seq = 2", "entry 2 .* was modified"),
        ("UPDATE ledger SET guarantee = 'approximate' WHERE seq = 4", "entry 4"),
        ("DELETE FROM ledger WHERE seq = 2", "entry 2 is missing"),
        ("DELETE FROM ledger WHERE seq = 4", "last entry is not the one committed"),
        ("UPDATE ledger SET seq = CASE seq WHEN 2 THEN 3 ELSE 2 END WHERE seq IN (2, 3)",
         "does not follow"),
    ],
    ids=["edit ids", "edit seconds", "edit guarantee", "delete middle", "delete last", "swap"],
)
def test_tampering_is_detected(store_with_requests, sql, message, capsys):
    if "seq = CASE" in sql:  # swapping primary keys needs a temporary value
        tamper(store_with_requests, "UPDATE ledger SET seq = 99 WHERE seq = 2")
        tamper(store_with_requests, "UPDATE ledger SET seq = 2 WHERE seq = 3")
        tamper(store_with_requests, "UPDATE ledger SET seq = 3 WHERE seq = 99")
    else:
        tamper(store_with_requests, sql)
    strategy = expunge.open(store_with_requests)
    with pytest.raises(LedgerIntegrityError, match=message):
        strategy.verify()
    strategy.close()
    assert main(["ledger", "--store", str(store_with_requests), "--verify"]) == 2
    assert "error" in capsys.readouterr().err


def test_rewriting_the_whole_chain_is_caught_by_the_committed_state(store_with_requests):
    """Someone deletes the last request and re-anchors the head consistently, MAC included
    (they read the key): the chain alone verifies, but the state does not match it."""
    import json

    tamper(store_with_requests, "DELETE FROM ledger WHERE seq = 4")
    db = sqlite3.connect(store_with_requests / "expunge.sqlite")
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM ledger WHERE seq = 3").fetchone()
    key = StoreKey((store_with_requests / "secret.key").read_bytes())
    anchor = {"seq": 3, "hash": row["hash"],
              "mac": head_mac(key, 3, row["hash"], row["state_digest"])}
    db.execute("UPDATE state SET value = ? WHERE name = 'ledger_head'", (json.dumps(anchor),))
    db.commit()
    db.close()
    strategy = expunge.open(store_with_requests)
    assert strategy.ledger.verify() == 3  # the chain alone looks fine ...
    with pytest.raises(LedgerIntegrityError, match="state_digest mismatch"):
        strategy.verify()  # ... but the committed state is the one request 4 wrote
    strategy.close()


def test_hash_is_canonical_over_fields():
    fields = {
        "seq": 1, "request_id": "r", "kind": "forget", "created_at": "t", "strategy": "s",
        "guarantee": "exact", "ids": "[1]", "n_ids": 1, "fingerprint_before": "a",
        "fingerprint_after": "b", "samples_retrained": 1, "sample_passes": 2,
        "submodels_retrained": "[0]", "seconds": 0.5, "purged": "[]", "details": "{}",
        "expunge_version": "0", "state_digest": "s",
    }
    h = chain_hash(GENESIS, fields)
    assert h == chain_hash(GENESIS, dict(reversed(list(fields.items()))))
    assert h != chain_hash(GENESIS, {**fields, "ids": "[2]"})
    assert h != chain_hash("1" * 64, fields)


def test_ledger_entries_record_the_request(store_with_requests, small_digits):
    strategy = expunge.open(store_with_requests)
    fit, *forgets = strategy.ledger.entries()
    assert fit.kind == "fit" and fit.ids == [] and fit.details["n_samples"] == len(small_digits)
    for k, entry in enumerate(forgets):
        assert entry.ids == [int(small_digits.ids[k])]
        assert entry.strategy == "retrain" and entry.guarantee == "exact"
        assert entry.samples_retrained == len(small_digits) - (k + 1)
        assert entry.sample_passes == entry.samples_retrained * PARAMS["epochs"]
        assert entry.details["tag"] == f"t{k}"
        assert entry.purged  # the old model and the old data copy
        assert entry.seconds > 0
    assert strategy.ledger.forgotten() == {int(small_digits.ids[k]): k + 2 for k in range(3)}
    strategy.close()
