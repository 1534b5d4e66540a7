"""``expunge serve``: start-up time, latency and throughput of no-op-cost requests, load test.

    .venv/bin/pip install -e '.[service]'
    .venv/bin/python benchmarks/measure_service.py                 # digits, ~2 minutes

Fits ARCANE on digits into a store and picks ids its selection left out: forgetting one
retrains nothing (``sample_passes == 0``, checked with ``m.preview``), so what is measured
is the service itself: HTTP, the durable queue (an fsynced SQLite commit before the
acknowledgement), the store's lock, validation, the rewrite of one data bucket, the
ledger commit, the receipt's signature. Then:

* **start-up**: ``expunge serve`` as a subprocess until ``GET /v1/health`` answers 200
  (``--startups`` times; next to ``python -c "import torch"``, which it cannot beat);
* **latency**: one client, requests one after another (p50/p95/max);
* **throughput**: ``--clients`` concurrent clients, ``--requests`` requests, without and
  with a batching window; afterwards every request must be in exactly one ledger entry
  and the ledger must verify (the load test's checks);
* **batching where it pays**: ``--costly`` requests that each retrain a SISA shard (digits,
  5 shards x 5 slices), from ``--clients`` clients, without and with the batching window.

The same request in process (``m.forget``) is timed too, to separate the request from the
service around it. The machine may be shared: compare the numbers of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import expunge
from expunge.data import load_dataset

TOKEN = "benchmark-token-0123456789abcdef"


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(store: Path, tokens: Path, *extra: str) -> tuple[subprocess.Popen, int, float]:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "expunge.cli", "serve", "--store", str(store), "--token-file",
         str(tokens), "--port", str(port), "--quiet", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if call(port, "GET", "/v1/health")[0] == 200:
                return process, port, time.perf_counter() - started
        except OSError:
            time.sleep(0.02)
        if process.poll() is not None:
            raise SystemExit("expunge serve exited; run it by hand to see why")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def forget(port: int, sample: int, key: str) -> float:
    started = time.perf_counter()
    status, body = call(port, "POST", "/v1/forget", {"ids": [sample], "request_key": key})
    if status != 200:
        raise SystemExit(f"request {key} failed: {status} {body}")
    return time.perf_counter() - started


def check_ledger(store: Path, keys: set[str]) -> str:
    m = expunge.open(store)
    seen: list[str] = []
    for entry in m.ledger.entries("forget"):
        seen.extend(entry.details.get("service_requests", []))
    lost = len(keys - set(seen))
    duplicated = len(seen) - len(set(seen))
    entries = m.verify()
    m.close()
    return f"lost {lost}, duplicated {duplicated}, ledger verifies ({entries} entries)"


def costly_requests(tmp: Path, tokens: Path, train, args) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Requests that retrain a SISA shard each: one at a time, then batched."""
    rows = []
    ids = [int(i) for i in np.random.default_rng(1).permutation(train.ids)[:2 * args.costly]]
    for n, window in enumerate((0.0, max(args.batch_window, 1.0))):
        store = tmp / f"sisa-{n}"
        expunge.SISA(model="mlp", n_shards=5, n_slices=5, epochs=10, batch_size=32,
                     momentum=0.9, store=store).fit(train).close()
        extra = ("--batch-window", str(window)) if window else ()
        process, port, _ = start(store, tokens, *extra)
        batch = {f"c{window}-{i}": ids[n * args.costly + i] for i in range(args.costly)}
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            times = list(pool.map(forget, [port] * len(batch), batch.values(), batch))
        total = time.perf_counter() - started
        stop(process)
        m = expunge.open(store)
        entries = m.ledger.entries("forget")
        rows.append((window, total, times, len(entries), sum(e.sample_passes for e in entries)))
        m.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--startups", type=int, default=5)
    parser.add_argument("--batch-window", type=float, default=0.5)
    parser.add_argument("--costly", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("digits")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s"
        m = expunge.ARCANE(n_selected=40, n_blocks=3, feature_dim=32, store=store).fit(train)
        candidates = [int(i) for i in np.random.default_rng(0).permutation(train.ids)]
        free = [i for i in candidates if m.preview([i]).sample_passes == 0]
        needed = args.sequential + 2 * args.requests + 20
        if len(free) < needed:
            raise SystemExit(f"only {len(free)} no-op ids; lower --requests")
        in_process = []
        for sample in free[:20]:
            started = time.perf_counter()
            m.forget([sample])
            in_process.append(time.perf_counter() - started)
        m.close()
        free = free[20:]
        tokens = Path(tmp) / "tokens"
        tokens.write_text(TOKEN + "\n")
        os.chmod(tokens, 0o600)

        imports = []
        for _ in range(args.startups):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            imports.append(time.perf_counter() - started)
        startups = []
        for _ in range(args.startups):
            process, port, seconds = start(store, tokens)
            startups.append(seconds)
            stop(process)

        process, port, _ = start(store, tokens)
        latencies = [forget(port, free.pop(), f"seq-{i}") for i in range(args.sequential)]
        rows = []
        for window in (0.0, args.batch_window):
            if window:
                stop(process)
                process, port, _ = start(store, tokens, "--batch-window", str(window))
            batch = {f"w{window}-{i}": free.pop() for i in range(args.requests)}
            before = call(port, "GET", "/v1/health")[1]["batches_processed"]
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                times = list(pool.map(forget, [port] * len(batch), batch.values(), batch))
            total = time.perf_counter() - started
            batches = call(port, "GET", "/v1/health")[1]["batches_processed"] - before
            rows.append((window, total, times, batches, set(batch)))
        stop(process)
        keys = {f"seq-{i}" for i in range(args.sequential)}
        for *_, batch_keys in rows:
            keys |= batch_keys
        ledger = check_ledger(store, keys)
        costly = costly_requests(Path(tmp), tokens, train, args)

    print(f"digits ARCANE store, requests that retrain nothing; {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f})")
    print()
    print(f"start-up to first /v1/health 200: median {statistics.median(startups):.2f} s "
          f"(min {min(startups):.2f}, max {max(startups):.2f}) over {args.startups}; "
          f"`python -c 'import torch'` alone: median {statistics.median(imports):.2f} s")
    print(f"the same request in process (m.forget): median "
          f"{statistics.median(in_process) * 1000:.0f} ms")
    print(f"sequential, 1 client, {args.sequential} requests: p50 "
          f"{percentile(latencies, 50) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f}"
          f" ms, max {max(latencies) * 1000:.0f} ms")
    print()
    print("| batch window | clients | requests | seconds | requests/s | ledger entries | "
          "latency p50 (ms) | p95 (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for window, total, times, batches, _ in rows:
        print(f"| {window:g} s | {args.clients} | {len(times)} | {total:.1f} | "
              f"{len(times) / total:.1f} | {batches} | {percentile(times, 50) * 1000:.0f} | "
              f"{percentile(times, 95) * 1000:.0f} |")
    print()
    print(f"afterwards: {ledger}")
    print()
    print(f"SISA (5 shards x 5 slices, MLP, digits): {args.costly} requests of one id each, "
          f"{args.clients} clients")
    print()
    print("| batch window | seconds | requests/s | ledger entries | sample-passes | "
          "latency p50 (ms) | p95 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for window, total, times, entries, passes in costly:
        print(f"| {window:g} s | {total:.1f} | {len(times) / total:.2f} | {entries} | {passes} | "
              f"{percentile(times, 50) * 1000:.0f} | {percentile(times, 95) * 1000:.0f} |")


if __name__ == "__main__":
    main()
