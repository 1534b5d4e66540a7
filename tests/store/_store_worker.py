"""Another process acting on a store, for the concurrency and crash tests.

``python _store_worker.py`` serves commands, one JSON object per line on stdin, and answers
each with one JSON line on stdout, so that a test pays the interpreter's start-up (torch's
import: seconds) once per process, not once per trial:

* ``{"op": "fit", "store": PATH, "params": {...}, "n": N}``: fit SISA on the first N
  digits into a new store;
* ``{"op": "open", "store": PATH}``: load the store (``expunge.open``);
* ``{"op": "forget", "ids": [...], "delay": S}``: sleep S seconds, then forget the ids;
* ``{"op": "forget-each", "ids": [...]}``: forget the ids one request at a time;
* ``{"op": "hold", "seconds": S}``: hold the store's write lock for S seconds (answers
  ``held`` once it holds it, then ``released``);
* ``{"op": "exit"}``.

A refused request answers ``{"status": "refused", "error": <class name>, ...}``.
"""

from __future__ import annotations

import json
import sys
import time

import torch

torch.set_num_threads(1)

import expunge  # noqa: E402
from expunge.exceptions import ExpungeError  # noqa: E402


def answer(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    handle = None
    answer(status="started")
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "fit":
                from expunge.data import load_dataset

                train, _ = load_dataset("digits")
                data = train.select(train.ids[: int(command["n"])])
                expunge.SISA(**command["params"], store=command["store"]).fit(data).close()
                answer(op=op, status="ok")
            elif op == "open":
                if handle is not None:
                    handle.close()
                handle = expunge.open(command["store"])
                answer(op=op, status="ok", entries=len(handle.ledger))
            elif op == "forget":
                time.sleep(float(command.get("delay", 0.0)))
                report = handle.forget(command["ids"])
                answer(op=op, status="applied", ids=command["ids"], seq=report.seq)
            elif op == "forget-each":
                for sample_id in command["ids"]:
                    handle.forget([sample_id])
                answer(op=op, status="done")
            elif op == "hold":
                with handle.locked():
                    answer(op=op, status="held")
                    time.sleep(float(command["seconds"]))
                answer(op=op, status="released")
            elif op == "exit":
                break
            else:
                answer(op=op, status="unknown")
        except ExpungeError as err:
            answer(op=op, status="refused", ids=command.get("ids"), error=type(err).__name__,
                   message=str(err))
    if handle is not None:
        handle.close()


if __name__ == "__main__":
    main()
