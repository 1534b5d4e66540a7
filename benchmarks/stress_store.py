"""Many concurrent-writer races and SIGKILLs on small stores; counts consistent/tried.

    .venv/bin/python benchmarks/stress_store.py --races 40 --kills 40

The unit tests run a handful of each (tests/store/test_concurrency.py); this runs many,
with random timings from ``--seed``, using the same worker processes
(tests/store/_store_worker.py, driven over a pipe). Each trial is judged by the store alone:

* **race**: two processes load a fresh SISA store (300 digits), then forget one id each
  after random delays (0-0.5 s; the same id in 1 trial of 4). Consistent means: at least
  one request applied (both unless the same id), the ledger's forgotten set equals the ids
  missing from the training data, the model is bit-for-bit ``fit(D without them)``,
  ``verify()`` passes and no file is left that the committed state does not name;
* **kill**: a process fits (1 trial in 4) or forgets 20 ids one request at a time, and is
  SIGKILLed after a random delay (0.05-2 s). Consistent means: the store either has no
  committed fit (a refit then resumes to the same model as a fresh fit) or verifies, holds
  exactly a prefix of the requests, in order, and passes the checks above.

Prints the counts and every inconsistency found.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "store"))

from test_concurrency import PARAMS, Worker  # noqa: E402

import expunge  # noqa: E402
from expunge.data import load_dataset  # noqa: E402
from expunge.exceptions import ExpungeError  # noqa: E402


def problems_of(path: Path, data: Any, applied: set[int]) -> list[str]:
    """What is wrong with the store at ``path`` if ``applied`` ids were forgotten."""
    found: list[str] = []
    try:
        strategy = expunge.open(path)
    except ExpungeError as err:
        return [f"open failed: {err}"]
    try:
        if strategy.verify() != 1 + len(applied):
            found.append("ledger length")
        if set(strategy.ledger.forgotten()) != applied:
            found.append(f"ledger forgot {sorted(strategy.ledger.forgotten())}, not {applied}")
        missing = set(data.ids.tolist()) - set(strategy.training_data.ids.tolist())
        if missing != applied:
            found.append(f"the data lacks {sorted(missing)}, not {sorted(applied)}")
        twin = expunge.SISA(**PARAMS).fit(data.drop(sorted(applied)) if applied else data)
        if strategy.fingerprint() != twin.fingerprint():
            found.append("model differs from fit(D without the applied ids)")
        extra = strategy.store_.list_blobs() - set(strategy.store_.read_state()["blobs"])
        if extra:
            found.append(f"files the state does not name: {sorted(extra)[:3]}")
    except ExpungeError as err:
        found.append(f"verify failed: {err}")
    finally:
        strategy.close()
    return found


def fit_store(path: Path, data: Any) -> Path:
    expunge.SISA(**PARAMS, store=path).fit(data).close()
    return path


def race(trial: int, rng: random.Random, workers: list[Worker], data: Any, tmp: Path
         ) -> list[str]:
    path = fit_store(tmp / f"race-{trial}", data)
    same = rng.random() < 0.25
    first = int(data.ids[rng.randrange(len(data))])
    second = first if same else int(data.ids[rng.randrange(len(data))])
    while not same and second == first:
        second = int(data.ids[rng.randrange(len(data))])
    for worker in workers:
        worker.ask(op="open", store=str(path))
    for worker, sample_id in zip(workers, (first, second)):
        worker.send(op="forget", ids=[sample_id], delay=rng.uniform(0.0, 0.5))
    results = [worker.read() for worker in workers]
    applied = {r["ids"][0] for r in results if r["status"] == "applied"}
    found = problems_of(path, data, applied)
    expected = 1 if same else 2
    if sum(r["status"] == "applied" for r in results) != expected:
        found.append(f"{results}")
    return found


def kill(trial: int, rng: random.Random, data: Any, tmp: Path) -> list[str]:
    path = tmp / f"kill-{trial}"
    worker = Worker()
    worker.read()
    during_fit = trial % 4 == 0
    ids = [int(i) for i in data.ids[20:40]]
    if during_fit:
        worker.send(op="fit", store=str(path), params=PARAMS, n=len(data))
    else:
        fit_store(path, data)
        worker.ask(op="open", store=str(path))
        worker.send(op="forget-each", ids=ids)
    time.sleep(rng.uniform(0.05, 2.0))
    worker.kill()
    try:
        strategy = expunge.open(path)
    except ExpungeError as err:
        if during_fit and ("no committed fit" in str(err) or "not an expunge store" in str(err)):
            resumed = expunge.SISA(**PARAMS, store=path).fit(data)
            same = resumed.fingerprint() == expunge.SISA(**PARAMS).fit(data).fingerprint()
            resumed.close()
            return [] if same else ["a refit after the kill differs from a fresh fit"]
        return [f"open failed: {err}"]
    forgotten = set(strategy.ledger.forgotten())
    strategy.close()
    found = problems_of(path, data, forgotten)
    if forgotten != set(ids[:len(forgotten)]):
        found.append(f"not a prefix of the requests: {sorted(forgotten)}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--races", type=int, default=40)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("digits")
    data = train.select(train.ids[:300])
    rng = random.Random(args.seed)
    failures: dict[str, list[str]] = {"race": [], "kill": []}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        workers = [Worker(), Worker()]
        for worker in workers:
            worker.read()
        for trial in range(args.races):
            found = race(trial, rng, workers, data, tmp)
            failures["race"] += [f"race {trial}: {p}" for p in found]
        for worker in workers:
            worker.close()
        for trial in range(args.kills):
            found = kill(trial, rng, data, tmp)
            failures["kill"] += [f"kill {trial}: {p}" for p in found]
    for kind, tried in (("race", args.races), ("kill", args.kills)):
        bad = len({line.split(":")[0] for line in failures[kind]})
        print(f"{kind}: {tried - bad} consistent / {tried} tried")
    for line in failures["race"] + failures["kill"]:
        print("  " + line)


if __name__ == "__main__":
    main()
