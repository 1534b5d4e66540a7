"""``expunge serve``: the authenticated deletion service over one store.

Binds to loopback (127.0.0.1) unless ``--host`` says otherwise; every endpoint needs a
bearer token from ``--token-file``. Requests are queued durably (SQLite, by default
``STORE/service/queue.sqlite``) before they are acknowledged and processed one batch at a
time under the store's write lock. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from pathlib import Path

from expunge.cli._common import console, open_store

NAME = "serve"
HELP = "serve a store over HTTP: authenticated, queued deletions (needs expunge[service])"

#: where the queue lives inside the store unless --queue says otherwise
QUEUE_FILE = Path("service") / "queue.sqlite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    parser.add_argument("--token-file", required=True, metavar="FILE",
                        help="bearer tokens, one per line (mode 600; >= 16 characters each)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only). Anything "
                             "else exposes the service: put TLS in front of it")
    parser.add_argument("--port", type=int, default=8017, help="port (default 8017)")
    parser.add_argument("--batch-window", type=float, default=0.0, metavar="SECONDS",
                        help="let requests accumulate this long and forget them as one "
                             "request (one retraining); default 0: one at a time")
    parser.add_argument("--max-batch", type=int, default=1000,
                        help="most requests merged into one (default 1000)")
    parser.add_argument("--queue", default=None, metavar="FILE",
                        help=f"the queue database (default STORE/{QUEUE_FILE})")
    parser.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                        help="fail a batch with 503 if another process holds the store's lock "
                             "longer (default: wait)")
    parser.add_argument("--signing-key", default=None, metavar="PEM",
                        help="Ed25519 private key that signs receipts (default: "
                             "$EXPUNGE_SIGNING_KEY, else STORE/keys/receipt-signing-key.pem)")
    parser.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate")
    parser.add_argument("--ssl-keyfile", default=None, help="... and this private key")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from expunge.service import require_service_extra

    require_service_extra()
    import uvicorn

    from expunge.service import read_tokens
    from expunge.service.app import create_app

    out = console(args)
    tokens = read_tokens(args.token_file)
    overrides = {} if args.signing_key is None else {"signing_key": args.signing_key}
    strategy = open_store(args.store, show_progress=False, **overrides)
    queue = Path(args.queue) if args.queue else Path(args.store) / QUEUE_FILE
    app = create_app(strategy, tokens, queue, batch_window=args.batch_window,
                     max_batch=args.max_batch, lock_timeout=args.lock_timeout)
    if not _is_loopback(args.host) and args.ssl_certfile is None:
        print(f"expunge: warning: serving on {args.host} without TLS: tokens and requests "
              "cross the network in clear; use --ssl-certfile/--ssl-keyfile or a TLS proxy",
              file=sys.stderr)
    scheme = "https" if args.ssl_certfile else "http"
    out.print(f"expunge serve: {strategy.name} store {args.store} "
              f"({len(strategy.ledger)} ledger entries) at {scheme}://{args.host}:{args.port} "
              f"(ready in {time.perf_counter() - started:.2f} s; queue {queue})")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    finally:
        strategy.close()
    return 0
