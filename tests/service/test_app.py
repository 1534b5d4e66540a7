"""The HTTP API (FastAPI TestClient, in process): auth, bodies, answers."""

from __future__ import annotations

import os

import pytest

import expunge
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError
from expunge.service._tokens import read_tokens, token_matches

pytestmark = pytest.mark.service
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from expunge.service.app import create_app  # noqa: E402

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


@pytest.fixture
def client(small_digits, tmp_path):
    keys = [f"user-{i % 25}" for i in range(len(small_digits))]
    data = IndexedDataset(small_digits.X, small_digits.y, small_digits.ids, keys)
    m = make("sisa", store=tmp_path / "s").fit(data)
    app = create_app(m, [TOKEN.encode()], tmp_path / "q.sqlite")
    with TestClient(app) as c:
        c.strategy = m
        c.data = data
        yield c
    m.close()


def test_tokens_file_must_be_private_and_long(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# ops team\n{TOKEN}\n\nanother-token-0123456789\n")
    os.chmod(path, 0o644)
    with pytest.raises(InvalidParameterError, match="chmod 600"):
        read_tokens(path)
    os.chmod(path, 0o600)
    tokens = read_tokens(path)
    assert tokens == [TOKEN.encode(), b"another-token-0123456789"]
    assert token_matches(TOKEN, tokens) and token_matches("another-token-0123456789", tokens)
    assert not token_matches(TOKEN[:-1], tokens) and not token_matches("", tokens)
    path.write_text("short\n")
    with pytest.raises(InvalidParameterError, match="at least 16"):
        read_tokens(path)


@pytest.mark.parametrize("method, url", [
    ("post", "/v1/forget"), ("post", "/v1/preview"), ("get", "/v1/ledger"),
    ("get", "/v1/receipts/1"), ("get", "/v1/health"), ("get", "/v1/public-key"),
    ("get", "/v1/requests/x"),
])
def test_every_endpoint_needs_the_token(client, method, url):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        response = getattr(client, method)(url, headers=headers,
                                           **({"json": {"ids": [1]}} if method == "post" else {}))
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
    assert len(client.strategy.ledger) == 1


def test_forget_returns_the_report_and_a_verifiable_receipt(client):
    response = client.post("/v1/forget", json={"ids": [4, 9], "tag": "GDPR 12"}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and body["report"]["ids"] == [4, 9]
    key = client.get("/v1/public-key", headers=AUTH).text.encode()
    assert expunge.verify_receipt(body["receipt"], key)
    assert client.get(f"/v1/receipts/{body['seq']}", headers=AUTH).json() == body["receipt"]
    ledger = client.get("/v1/ledger", headers=AUTH).json()
    assert ledger["count"] == 2 and ledger["entries"][-1]["details"]["tag"] == "GDPR 12"
    assert client.get("/v1/ledger?after=1", headers=AUTH).json()["entries"][0]["seq"] == 2


def test_forget_a_subject_with_its_nonce(client):
    response = client.post("/v1/forget", json={"subject": "user-4"}, headers=AUTH)
    body = response.json()
    assert response.status_code == 200, body
    assert body["report"]["ids"] == sorted(client.data.ids_of_subject("user-4").tolist())
    key = client.strategy.public_key
    assert expunge.verify_receipt(body["receipt"], key, subject="user-4",
                                  subject_nonce=body["subject_nonce"])
    again = client.post("/v1/forget", json={"subject": "user-4"}, headers=AUTH)
    assert again.status_code == 404 and "already forgotten" in again.json()["error"]


@pytest.mark.parametrize("body, reason", [
    ({}, "exactly one of 'ids'"),
    ({"ids": [1], "subject": "x"}, "exactly one of 'ids'"),
    ({"ids": []}, "at least 1"),
    ({"ids": [1, 1]}, "more than once"),
    ({"ids": ["a"]}, "integer"),
    ({"ids": [1.5]}, "integer"),
    ({"ids": [2**64]}, "64 bits"),
    ({"ids": [1], "colour": "red"}, "Extra inputs"),
    ({"subject": ""}, "non-empty"),
    ({"ids": [1], "request_key": "no spaces"}, "request_key"),
    ({"ids": [10**9]}, "1000000000"),
])
def test_invalid_bodies_get_422_with_the_reason(client, body, reason):
    response = client.post("/v1/forget", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert reason in response.text
    assert len(client.strategy.ledger) == 1


def test_already_forgotten_is_409(client):
    assert client.post("/v1/forget", json={"ids": [3]}, headers=AUTH).status_code == 200
    response = client.post("/v1/forget", json={"ids": [3]}, headers=AUTH)
    assert response.status_code == 409 and "already forgotten" in response.json()["error"]


def test_request_keys_make_resubmission_idempotent(client):
    first = client.post("/v1/forget", json={"ids": [11], "request_key": "ticket-1"},
                        headers=AUTH)
    second = client.post("/v1/forget", json={"ids": [11], "request_key": "ticket-1"},
                         headers=AUTH)
    assert first.status_code == second.status_code == 200
    assert first.json()["seq"] == second.json()["seq"]
    assert len(client.strategy.ledger.entries("forget")) == 1
    status = client.get("/v1/requests/ticket-1", headers=AUTH)
    assert status.json()["status"] == "done"
    assert client.get("/v1/requests/nope", headers=AUTH).status_code == 404


def test_without_waiting_the_request_is_acknowledged_then_polled(client):
    response = client.post("/v1/forget", json={"ids": [12], "wait": False}, headers=AUTH)
    assert response.status_code in (200, 202)
    location = f"/v1/requests/{response.json()['request_key']}"
    import time
    for _ in range(200):
        status = client.get(location, headers=AUTH).json()
        if status["status"] == "done":
            break
        time.sleep(0.05)
    assert status["status"] == "done" and status["report"]["ids"] == [12]


def test_preview_and_health(client):
    preview = client.post("/v1/preview", json={"ids": [20]}, headers=AUTH)
    assert preview.status_code == 200 and preview.json()["exact"] is True
    report = client.post("/v1/forget", json={"ids": [20]}, headers=AUTH).json()["report"]
    assert preview.json()["sample_passes"] == report["sample_passes"]
    assert client.post("/v1/preview", json={"ids": [20]}, headers=AUTH).status_code == 409
    assert client.post("/v1/preview", json={"subject": "nobody"}, headers=AUTH).status_code == 404
    health = client.get("/v1/health", headers=AUTH).json()
    assert health["status"] == "ok" and health["strategy"] == "sisa"
    assert health["queue"]["done"] == 1
    assert client.get("/v1/receipts/99", headers=AUTH).status_code == 404
