"""Where a sub-model trains, with which precision, and what decides its bits there.

``device="cpu"`` is the default and the only platform the test suite checks bit for bit.
``"cuda"`` and ``"mps"`` train on the accelerator with PyTorch's deterministic algorithms
enforced for the duration of training (``torch.use_deterministic_algorithms(True)``,
cuDNN's deterministic mode, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so that the same GPU model,
driver and torch version give the same bits; ``"auto"`` picks CUDA, then MPS, then CPU.

The platform a store was fitted on (device, its model, torch version, CPU kernel set,
precision) is recorded in its manifest; a request computed on another platform still
retrains only from checkpoints that never saw the forgotten ids, but is no longer bit-for-bit
``fit`` on the retained data, so it warns and the ledger entry records the platform.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from expunge.exceptions import InvalidParameterError

DEVICES = ("cpu", "cuda", "mps", "auto")
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``.

    Raises:
        InvalidParameterError: the device is not available here (naming what is).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(
            "device='cuda' but torch sees no CUDA device here (torch.cuda.is_available() is "
            "False; this torch build is " + torch.__version__ + "). Use device='cpu' or "
            "device='auto', or install a CUDA build of torch."
        )
    if name == "mps" and not _mps_available():
        raise InvalidParameterError(
            "device='mps' but torch.backends.mps.is_available() is False here. Use "
            "device='cpu' or device='auto'."
        )
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``None`` for full float32)."""
    return _AUTOCAST.get(precision)


def platform(device: torch.device, precision: str) -> str:
    """What decides the bits of training: device (and its model), torch, CPU kernels, precision."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    cpu = capability() if capability else "unknown"
    where = device.type
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        where = (f"cuda {torch.cuda.get_device_name(index)} (sm_{major}{minor}, "
                 f"CUDA {torch.version.cuda})")
    return f"{where}; torch {torch.__version__}; {cpu} CPU kernels; {precision}"


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Enforce PyTorch's deterministic algorithms on an accelerator while the block runs.

    On CPU this changes nothing (the CPU kernels the reference models use are deterministic
    at a fixed thread count, which the engine pins). On CUDA an operation without a
    deterministic implementation raises instead of silently varying.
    """
    if device.type == "cpu":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn
    was_cudnn = (cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        cudnn.deterministic, cudnn.benchmark = was_cudnn
