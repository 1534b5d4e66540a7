"""``expunge serve`` as a real process: start-up, a 200-request load test, SIGKILL safety.

Slow tier (``make test-service``): every request goes through HTTP, the durable queue, the
store's lock and a ledger commit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import expunge

pytestmark = [pytest.mark.service, pytest.mark.slow]
pytest.importorskip("fastapi")

TOKEN = "load-test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(port: int, method: str, path: str, body: dict | None = None, timeout: float = 120):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Server:
    def __init__(self, store: Path, tokens: Path, *extra: str) -> None:
        self.port = free_port()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "expunge.cli", "serve", "--store", str(store),
             "--token-file", str(tokens), "--port", str(self.port), "--quiet", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ready_after = self._wait_ready()

    def _wait_ready(self) -> float:
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.process.stderr.read().decode())  # type: ignore[union-attr]
            try:
                if call(self.port, "GET", "/v1/health", timeout=2)[0] == 200:
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)


@pytest.fixture
def store(digits, tmp_path):
    train, _ = digits
    m = expunge.ARCANE(n_selected=40, n_blocks=3, feature_dim=32, store=tmp_path / "s")
    m.fit(train)
    m.close()
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    os.chmod(tokens, 0o600)
    return tmp_path / "s", tokens, train


def forget_one(port: int, key: str, sample: int) -> tuple[str, int, dict]:
    for _ in range(5):  # a dropped connection is retried with the same key: never twice
        try:
            status, body = call(port, "POST", "/v1/forget",
                                {"ids": [sample], "request_key": key, "timeout": 300})
            return key, status, body
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{key} never answered")


def check_exactly_once(path: Path, keys: dict[str, int]) -> None:
    """Every key is in exactly one ledger entry, with its id, and the ledger verifies."""
    m = expunge.open(path)
    try:
        seen: dict[str, int] = {}
        forgotten: list[int] = []
        for entry in m.ledger.entries("forget"):
            for key in entry.details["service_requests"]:
                assert key not in seen, f"{key} applied twice"
                seen[key] = entry.seq
            forgotten.extend(entry.ids)
        assert set(seen) == set(keys), "lost requests: " + str(sorted(set(keys) - set(seen)))
        assert sorted(forgotten) == sorted(keys.values())
        assert len(set(forgotten)) == len(forgotten)
        assert m.verify() == len(m.ledger)
    finally:
        m.close()


def test_200_requests_none_lost_none_duplicated(store):
    path, tokens, train = store
    samples = np.random.default_rng(0).choice(train.ids, 200, replace=False).tolist()
    keys = {f"load-{i:03d}": int(s) for i, s in enumerate(samples)}
    server = Server(path, tokens)
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda kv: forget_one(server.port, *kv), keys.items()))
        seconds = time.perf_counter() - started
        assert all(status == 200 and body["status"] == "done" for _, status, body in answers), \
            [a for a in answers if a[1] != 200][:3]
        health = call(server.port, "GET", "/v1/health")[1]
        assert health["queue"]["done"] == 200 and health["queue"]["queued"] == 0
    finally:
        server.stop()
    check_exactly_once(path, keys)
    print(f"\n200 requests in {seconds:.1f} s ({200 / seconds:.1f}/s); "
          f"server ready after {server.ready_after:.2f} s")


def test_acknowledged_requests_survive_sigkill(store):
    path, tokens, train = store
    samples = np.random.default_rng(1).choice(train.ids, 60, replace=False).tolist()
    keys = {f"kill-{i:02d}": int(s) for i, s in enumerate(samples)}
    server = Server(path, tokens)
    acked = {}
    for key, sample in keys.items():
        status, body = call(server.port, "POST", "/v1/forget",
                            {"ids": [sample], "request_key": key, "wait": False})
        assert status in (200, 202), body
        acked[key] = sample
        if len(acked) == 40:
            server.stop(signal.SIGKILL)  # mid-processing, with requests still queued
            break
    server = Server(path, tokens)  # recovers: finishes what was committed, requeues the rest
    try:
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            counts = call(server.port, "GET", "/v1/health")[1]["queue"]
            if counts["done"] == len(acked):
                break
            time.sleep(0.1)
        assert counts["done"] == len(acked) and counts["failed"] == 0, counts
    finally:
        server.stop()
    check_exactly_once(path, acked)
