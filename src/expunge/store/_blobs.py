"""A blob's bytes: safetensors encoding and decoding, and reading and writing one file.

Shared by the store directory (:class:`~expunge.store.DirectoryStore`) and the workers'
blob-only view (:class:`~expunge.store.WorkerDirectoryStore`), so both write the same bytes
atomically and refuse the same damaged files. Loading never executes code (safetensors).

A blob written with ``compress=True`` is its safetensors bytes in one zstd frame (level 1,
one thread): an image bucket of MNIST shrinks ~10x for ~17 ms of compression per 12 MB.
Stores of one version compressed their training data this way; today it is stored plain,
so that a request can overwrite forgotten rows in place (:mod:`expunge.store._rewrite`,
``benchmarks/measure_stored_data.py``), and those stores still read. Readers tell the two
apart by the frame's magic number, which cannot begin a safetensors file (its first 8 bytes
are the header's length, and a header of ``0xFD2FB528`` bytes is refused).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import zstandard
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from expunge.exceptions import StoreError, StoreIntegrityError
from expunge.store._atomic import atomic_write_bytes
from expunge.store._fs import os_errors

Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]

#: the first four bytes of a zstd frame (RFC 8878 section 3.1.1)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: level 1: most of the ratio of level 3 on image data (9.7x vs 11.4x) at 70 % of its time
ZSTD_LEVEL = 1


def prepare(tensors: Tensors) -> Tensors:
    """Detached, contiguous CPU copies: what is stored never aliases live training state."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


#: torch dtype -> safetensors dtype code, for the encoder below (others use the library)
_CODES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
          torch.int32: "I32", torch.int64: "I64", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


Part = bytes | memoryview


def encode(tensors: Tensors, metadata: Metadata | None = None, *,
           compress: bool = False) -> bytes:
    """The safetensors bytes of ``tensors`` with string ``metadata`` (in a zstd frame with
    ``compress=True``): :func:`encode_parts` joined."""
    return b"".join(encode_parts(tensors, metadata, compress=compress))


def encode_parts(tensors: Tensors, metadata: Metadata | None = None, *,
                 compress: bool = False) -> list[Part]:
    """The blob's bytes as consecutive parts, not joined: the keyed digest and the file
    write take them in turn, so a large blob is not copied once more into one buffer
    (~45 ms for the 90 MB a 1 % PUMA request on MNIST writes). The parts view the tensors'
    memory (contiguous copies where a tensor is not): write them before changing those.

    The safetensors layout is written here rather than by ``safetensors.torch.save``,
    which copies each tensor several times on the way to its bytes (12 ms for a 2.7 MB data
    bucket against 1.7 ms here): the format's own (an 8-byte little-endian header length,
    the JSON header padded with spaces to 8 bytes, the tensors' bytes back to back in the
    header's order), and every blob is read back by the safetensors library, which
    validates it.
    """
    parts = _safetensors_parts(tensors, metadata)
    if not compress:
        return parts
    size = sum(len(part) for part in parts)
    # content size in the frame header: the reader allocates the output exactly once
    stream = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True
                                      ).compressobj(size=size)
    frame = [stream.compress(part) for part in parts]
    frame.append(stream.flush())
    return [b"".join(frame)]


def _safetensors_parts(tensors: Tensors, metadata: Metadata | None) -> list[Part]:
    if sys.byteorder != "little" or any(
            t.dtype not in _CODES for t in tensors.values()):  # pragma: no cover
        return [save_safetensors(prepare(tensors), metadata=dict(metadata or {}))]
    header: dict[str, object] = {}
    chunks: list[Part] = []
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _CODES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        if size:
            raw = tensor.reshape(-1).view(torch.uint8).numpy()
            chunks.append(memoryview(raw).cast("B"))  # type: ignore[arg-type]
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little") + text, *chunks]


def _metadata(data: bytes, where: str) -> Metadata:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("the header is truncated")
        header = json.loads(data[8:8 + size])
        metadata = header.get("__metadata__") or {}
        return {str(k): str(v) for k, v in dict(metadata).items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise StoreIntegrityError(
            f"{where} is not a readable safetensors file ({err}): it is truncated or corrupted."
        ) from None


def decode(data: bytes, where: str) -> tuple[Tensors, Metadata]:
    """Tensors and metadata of safetensors ``data``, compressed or not (read from
    ``where``, for messages)."""
    if data[:4] == ZSTD_MAGIC:
        try:
            data = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as err:
            raise StoreIntegrityError(
                f"{where} is not a readable zstd frame ({err}): it is truncated or corrupted."
            ) from None
    metadata = _metadata(data, where)
    try:
        tensors = load_safetensors(data)
    except Exception as err:  # safetensors raises its own SafetensorError
        raise StoreIntegrityError(
            f"{where} is not a readable safetensors file ({err}): it is truncated or corrupted."
        ) from None
    return tensors, metadata


def load_blob_file(path: str | Path) -> tuple[Tensors, Metadata]:
    """Tensors and metadata of one stored blob file, compressed or not: to inspect a store
    by hand (a compressed blob is not a plain safetensors file). Checks no digest; the
    store's own reads (:meth:`~expunge.store.Store.read_blob`) do."""
    path = Path(path)
    with os_errors("read", path):
        data = path.read_bytes()
    return decode(data, str(path))


def read_file(path: Path, name: str, root: Path, *, committed: bool) -> bytes:
    """The bytes of blob ``name`` at ``path`` (a missing committed blob is an integrity error)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        error = StoreIntegrityError if committed else StoreError
        raise error(
            f"The store {str(root)!r} is missing {path} ({name}); it was deleted "
            "outside expunge. Restore it from a backup, or refit into a new store."
        ) from None
    except OSError as err:
        with os_errors("read", path):
            raise err
    raise AssertionError("unreachable")  # pragma: no cover


def write_file(path: Path, data: bytes | list[Part]) -> None:
    """Write ``data`` (bytes, or consecutive parts) to ``path`` atomically (temp file,
    fsync, rename)."""
    with os_errors("write", path):
        atomic_write_bytes(path, data)
