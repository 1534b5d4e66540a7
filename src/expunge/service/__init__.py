"""``expunge serve``: an authenticated HTTP service that queues and processes deletions.

Needs the optional extra: ``pip install 'expunge[service]'`` (FastAPI, uvicorn). The queue
and the worker (:mod:`._queue`, :mod:`._processor`) need only the standard library; the
HTTP layer is :mod:`expunge.service.app`. Security model and operations: docs/operations.md.
"""

from __future__ import annotations

from typing import Any

from expunge.exceptions import ExpungeError
from expunge.service._tokens import read_tokens


class ServiceUnavailableError(ExpungeError, ImportError):
    """The optional service extra (FastAPI, uvicorn) is not installed."""


def require_service_extra() -> None:
    """Fail early with the install command when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ServiceUnavailableError(
            f"`expunge serve` needs the optional service extra ({err.name} is missing): "
            "pip install 'expunge[service]'."
        ) from None


def create_app(*args: Any, **kwargs: Any) -> Any:
    """:func:`expunge.service.app.create_app` (imported on use: FastAPI is optional)."""
    require_service_extra()
    from expunge.service.app import create_app as create

    return create(*args, **kwargs)


__all__ = ["ServiceUnavailableError", "create_app", "read_tokens", "require_service_extra"]
