"""Signed receipts: they verify offline, and every single-field edit fails."""

from __future__ import annotations

import copy
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import expunge
from expunge.cli import main
from expunge.exceptions import InvalidParameterError
from expunge.operations.receipts import FIELDS, canonical


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


@pytest.fixture(scope="module")
def signed(small_digits, tmp_path_factory):
    """A store with a fit and two requests, and the second request's receipt."""
    path = tmp_path_factory.mktemp("receipts") / "s"
    m = make("sisa", store=path).fit(small_digits)
    m.forget([3])
    report = m.forget([10, 11], tag="ticket 7")
    key = m.public_key
    m.close()
    return path, report, key


def _edits(value):
    """Every way to change one field's value (same type where possible, and other types)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, str(value), None]
    if isinstance(value, str):
        flipped = value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
        return [flipped, value + " ", value.upper() if value.upper() != value else value + "A",
                None]
    if isinstance(value, list):
        return [[*value, 0], value[:-1] if value else ["x"], [*list(reversed(value)), "y"]]
    if value is None:
        return ["", 0]
    raise AssertionError(value)


def test_receipt_holds_the_request_and_verifies_offline(signed):
    _, report, key = signed
    receipt = report.receipt
    assert set(receipt) == {*FIELDS, "signature"}
    assert receipt["seq"] == report.seq == 3 and receipt["ids"] == [10, 11]
    assert receipt["guarantee"] == "exact" and receipt["kind"] == "forget"
    assert receipt["fingerprint_after"] == report.fingerprint_after
    assert expunge.verify_receipt(receipt, key)
    assert expunge.verify_receipt(json.dumps(receipt), key.decode())
    assert expunge.verify_receipt(json.dumps(receipt).encode(), key)


def test_the_public_key_may_be_a_file(signed, tmp_path):
    from pathlib import Path

    _, report, key = signed
    (tmp_path / "k.pem").write_bytes(key)
    assert expunge.verify_receipt(report.receipt, tmp_path / "k.pem")
    assert expunge.verify_receipt(report.receipt, str(tmp_path / "k.pem"))
    with pytest.raises(InvalidParameterError, match="Cannot read"):
        expunge.verify_receipt(report.receipt, Path(tmp_path / "missing.pem"))


def test_every_single_field_edit_fails(signed):
    _, report, key = signed
    receipt = report.receipt
    tried = 0
    for name in receipt:
        for value in _edits(receipt[name]):
            edited = copy.deepcopy(receipt)
            edited[name] = value
            if edited == receipt:
                continue
            tried += 1
            assert not expunge.verify_receipt(edited, key), (name, value)
        removed = {k: v for k, v in receipt.items() if k != name}
        assert not expunge.verify_receipt(removed, key), name
    assert not expunge.verify_receipt({**receipt, "extra": 1}, key)
    assert tried > 3 * len(receipt)


def test_forged_and_foreign_receipts_fail(signed):
    _, report, key = signed
    receipt = report.receipt
    fields = {k: v for k, v in receipt.items() if k != "signature"}
    stranger = Ed25519PrivateKey.generate()
    # signed by another key, claiming this key's id
    import base64
    forged = {**fields, "signature": base64.b64encode(stranger.sign(canonical(fields))).decode()}
    assert not expunge.verify_receipt(forged, key)
    other_pem = stranger.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not expunge.verify_receipt(receipt, other_pem)
    for garbage in ("not json", "[]", "{}", b"\xff", json.dumps({**receipt, "signature": "!!"})):
        assert not expunge.verify_receipt(garbage, key)
    with pytest.raises(InvalidParameterError, match="not a PEM public key"):
        expunge.verify_receipt(receipt, b"nonsense")


def test_receipts_are_kept_and_reissued_identically(signed):
    path, report, key = signed
    m = expunge.open(path)
    assert m.receipt(3) == report.receipt
    assert expunge.verify_receipt(m.receipt(1), key)  # the fit's receipt anchors the store
    assert m.receipt(1)["store_id"] == m.ledger[1].hash == report.receipt["store_id"]
    # lost receipts (a crash between the commit and storing it) come back bit for bit
    m.store_._db.execute("DELETE FROM receipts")
    assert m.receipt(3) == report.receipt
    m.close()


def test_signing_key_is_private_and_outside_the_data(signed):
    path, _, key = signed
    default = path / "keys" / "receipt-signing-key.pem"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert stat.S_IMODE(default.parent.stat().st_mode) & 0o077 == 0
    loaded = serialization.load_pem_private_key(default.read_bytes(), None)
    assert loaded.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == key


def test_operator_supplied_key_by_path_and_env(small_digits, tmp_path, monkeypatch):
    operator = Ed25519PrivateKey.generate()
    pem = operator.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    key_file = tmp_path / "operator.pem"
    key_file.write_bytes(pem)
    os.chmod(key_file, 0o644)
    m = make("retrain", store=tmp_path / "s").fit(small_digits)
    with pytest.raises(InvalidParameterError, match="chmod 600"):
        m.set_signing_key(key_file)
    os.chmod(key_file, 0o600)
    m.set_signing_key(key_file)
    public = operator.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert m.public_key == public
    assert expunge.verify_receipt(m.forget([1]).receipt, public)
    m.close()
    monkeypatch.setenv("EXPUNGE_SIGNING_KEY", str(key_file))
    again = expunge.open(tmp_path / "s")
    assert again.public_key == public
    assert expunge.verify_receipt(again.forget([2]).receipt, public)
    again.close()
    monkeypatch.delenv("EXPUNGE_SIGNING_KEY")
    rsa_file = tmp_path / "not-ed25519.pem"
    rsa_file.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(rsa_file, 0o600)
    before = len(expunge.open(tmp_path / "s").ledger)
    code = main(["forget", "--store", str(tmp_path / "s"), "--ids", "4",
                 "--signing-key", str(rsa_file), "--quiet"])
    assert code == 2 and len(expunge.open(tmp_path / "s").ledger) == before


def test_cli_writes_and_verifies_a_receipt_offline(small_digits, tmp_path, capsys):
    store = str(tmp_path / "s")
    assert main(["fit", "retrain", "--store", store, "--model", "logreg", "--epochs", "1",
                 "--quiet"]) == 0
    receipt = tmp_path / "r.json"
    assert main(["forget", "--store", store, "--ids", "5,6", "--receipt-out", str(receipt)]) == 0
    key = tmp_path / "key.pem"
    capsys.readouterr()
    assert main(["ledger", "--store", store, "--public-key"]) == 0
    key.write_text(capsys.readouterr().out)
    assert main(["ledger", "--store", store, "--receipt", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(receipt.read_text())
    # offline: the store is gone, only the receipt and the key remain
    import shutil
    shutil.rmtree(store)
    assert main(["verify-receipt", str(receipt), "--public-key", str(key)]) == 0
    assert "receipt valid" in capsys.readouterr().out
    data = json.loads(receipt.read_text())
    data["ids"] = [5]
    receipt.write_text(json.dumps(data))
    assert main(["verify-receipt", str(receipt), "--public-key", str(key)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_the_standalone_verifier_in_the_docs_works(signed):
    """docs/operations.md shows how to verify without expunge: that code must work."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    block = text.split("<!-- standalone-verifier -->", 1)[1].split("```python", 1)[1]
    namespace: dict = {}
    exec(block.split("```", 1)[0], namespace)  # the documented code, as documented
    _, report, key = signed
    assert namespace["verify"](report.receipt, key)
    assert not namespace["verify"]({**report.receipt, "seq": 1}, key)
