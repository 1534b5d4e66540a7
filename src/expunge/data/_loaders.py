"""Dataset loaders (local files only) and forget-set samplers.

Every loader returns ``(train, test)`` as two :class:`IndexedDataset` objects and never
touches the network; :func:`download_mnist` is the one helper that does, and only when a
user calls it.

Ids
    Training samples get ids ``0..n_train-1`` and test samples ``TEST_ID_OFFSET + k``
    (``TEST_ID_OFFSET`` = 1_000_000; for a training set of a million samples or more, the
    next power of ten above its size), so that a train id and a test id never collide and an
    id alone says which split a sample came from. Where a loader drops rows (Adult with
    ``drop_missing=True``) ids are the rows' positions in the full split, so a sample keeps
    its id whether or not other rows were dropped.

Datasets
    ``"digits"``
        scikit-learn's bundled 8x8 digits (1797 images, no files needed). A fixed stratified
        split (``test_size=0.25``, ``split_seed=0``), inputs divided by 16 into ``[0, 1]``,
        shape ``(n, 1, 8, 8)``, 10 classes. ``root`` is ignored. ``raw=True`` keeps the pixel
        counts as uint8 with the input transform ``Scale(1/16)`` (the same bits).
    ``"mnist"``
        Any 4-file IDX set in ``root`` (MNIST, Fashion-MNIST, KMNIST...):
        ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
        ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``); the dotted naming
        ``train-images.idx3-ubyte`` is accepted too. When both a raw and a gzipped copy
        exist the raw one is read (no decompression). Images must be uint8; they are divided
        by 255 into float32 of shape ``(n, 1, H, W)``. ``n_classes`` is the largest label in
        either split plus one. Options ``limit_train`` / ``limit_test`` keep a prefix of each
        split (deterministic; for tests and quick benchmarks). ``raw=True`` keeps the
        images uint8, shape ``(n, 1, H, W)``, with the input transform ``Normalize(0, 255)``
        (the same float32 model inputs, bit for bit, computed per batch).
    ``"adult"``
        UCI Adult ("Census Income"): ``adult.data`` (train) and ``adult.test`` (test) in
        ``root``. Lines starting with ``|`` (``adult.test`` opens with
        ``|1x3 Cross validator``) and blank lines are skipped; fields are split on ``,`` and
        stripped; a row without exactly 15 fields is an error naming the file and line.
        Encoding, fitted on the TRAINING split only and applied unchanged to the test split:

        * the 6 numeric columns, in this order: age, fnlwgt, education-num, capital-gain,
          capital-loss, hours-per-week. capital-gain and capital-loss go through ``log1p``
          first; then every numeric column is standardised with the training mean and the
          training (population, ``ddof=0``) standard deviation, a zero deviation counting
          as 1. The training columns therefore have mean 0 and standard deviation 1.
        * the 8 categorical columns, one-hot, in this order: workclass, education,
          marital-status, occupation, relationship, race, sex, native-country. Each
          column's categories are the distinct values of the training split, sorted; ``?``
          (missing) is kept as a category of its own named ``"missing"``. A test value that
          the training split lacks encodes as all zeros in its block.
        * the label is 1 iff the income field is ``>50K`` (a trailing ``.`` is ignored), 0
          for ``<=50K``; anything else is an error.

        Features are the numeric columns followed by the one-hot blocks, float32 ``(n, d)``
        (d = 6 + the number of training categories; 108 for the real files). Rows with
        missing values are kept by default (``?`` is informative in Adult and dropping it
        changes the label balance); ``drop_missing=True`` removes every row with a ``?`` in
        any field, before the encoding is fitted.
    ``"npz"``
        ``root`` is a ``.npz`` file holding ``X_train``, ``y_train``, ``X_test``, ``y_test``
        and optionally ``ids_train`` / ``ids_test``; see :func:`load_npz`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from expunge.data._dataset import IndexedDataset
from expunge.data._transforms import Normalize, Scale
from expunge.exceptions import DatasetError, InvalidParameterError

__all__ = [
    "MNIST_SHA256",
    "TEST_ID_OFFSET",
    "available_datasets",
    "class_forget_ids",
    "download_mnist",
    "load_dataset",
    "load_npz",
    "random_forget_ids",
    "read_idx",
]

PathLike = str | os.PathLike[str]

#: First id of the test split (see the module docstring).
TEST_ID_OFFSET = 1_000_000

_ROOT_EXAMPLE = "../shared/datasets/mnist"


def _test_id_offset(n_train: int) -> int:
    """``TEST_ID_OFFSET``, or the next power of ten above ``n_train`` when that is larger."""
    if n_train < TEST_ID_OFFSET:
        return TEST_ID_OFFSET
    return 10 ** len(str(n_train))


def _split_ids(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    offset = _test_id_offset(n_train)
    return (
        np.arange(n_train, dtype=np.int64),
        offset + np.arange(n_test, dtype=np.int64),
    )


# ============================================================================ IDX files
#: IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_maybe_gzip(path: Path) -> bytes:
    """Bytes of ``path``, decompressed when it is gzip (``.gz`` suffix or gzip magic)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise DatasetError(f"{str(path)!r} is a folder, not a file.") from None
    except OSError as err:
        raise DatasetError(f"file {str(path)!r} could not be read: {err}") from err
    looks_gzip = raw[:2] == b"\x1f\x8b"
    if path.suffix == ".gz" and not looks_gzip:
        raise DatasetError(
            f"file {str(path)!r} ends in .gz but is not a gzip file (it does not start with "
            "the gzip magic bytes 1f 8b). Re-download it, or rename it without .gz if it is "
            "an uncompressed file."
        )
    if not looks_gzip:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"file {str(path)!r} is a corrupt or truncated gzip file ({err}). "
            "Re-download it and check its SHA-256."
        ) from err


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzipped, into a numpy array.

    The file is gzip-decompressed when its name ends in ``.gz`` or it starts with the gzip
    magic bytes. The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64; all big-endian), the number of
    dimensions, then one big-endian uint32 per dimension. The data must fill exactly the
    declared shape.

    Returns:
        A writable array in native byte order with the declared shape and dtype.

    Raises:
        DatasetError: naming the file when it is missing, not gzip despite ``.gz``, a corrupt
            gzip stream, has a bad magic number or an unknown type code, is truncated, or has
            bytes after the declared data.
    """
    p = Path(path)
    data = _read_maybe_gzip(p)
    name = str(p)
    if len(data) < 4:
        raise DatasetError(
            f"file {name!r} is not an IDX file: it holds {len(data)} bytes, fewer than the "
            "4-byte IDX magic number."
        )
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"file {name!r} is not an IDX file: its magic number starts with bytes "
            f"{data[0]:#04x} {data[1]:#04x} instead of 0x00 0x00."
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"{c:#04x} ({np.dtype(d).name})" for c, d in _IDX_DTYPES.items())
        raise DatasetError(
            f"file {name!r} has the unknown IDX type code {type_code:#04x}; known: {known}."
        )
    if ndim == 0:
        raise DatasetError(f"file {name!r} declares 0 dimensions; an IDX file needs at least 1.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"file {name!r} is truncated: its header declares {ndim} dimensions "
            f"({header} header bytes) but the file holds only {len(data)} bytes."
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[type_code])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DatasetError(
            f"file {name!r} is truncated: header declares {expected} bytes of data "
            f"(shape {tuple(dims)}, {dtype.name}), found {found}. Re-download it."
        )
    if found > expected:
        raise DatasetError(
            f"file {name!r} has {found - expected} unexpected bytes after the {expected} bytes "
            f"of data its header declares (shape {tuple(dims)}, {dtype.name}); the file is "
            "corrupt or not an IDX file."
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


# ============================================================================ options
def _check_int(value: Any, name: str, *, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        none = " or None" if allow_none else ""
        raise InvalidParameterError(f"{name} must be an int{none}; got {value!r}.")
    if int(value) < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}; got {value!r}.")
    return int(value)


def _need_root(name: str, root: PathLike | None, what: str, example: str) -> Path:
    if root is None:
        raise InvalidParameterError(
            f"load_dataset({name!r}) needs root=: this loader reads local files and never "
            f"downloads them. Pass the location of {what}, e.g. "
            f"load_dataset({name!r}, root={example!r}). Shared copies sit beside a checkout, "
            f"e.g. {_ROOT_EXAMPLE!r}; download_mnist() fetches MNIST for use elsewhere."
        )
    return Path(root).expanduser()


def _need_folder(name: str, root: PathLike | None, what: str) -> Path:
    folder = _need_root(name, root, what, f"../shared/datasets/{name}")
    if not folder.is_dir():
        raise DatasetError(
            f"the {name} folder {str(folder)!r} does not exist or is not a folder; it should "
            f"hold {what}."
        )
    return folder


# ============================================================================ digits
def _check_raw(raw: Any) -> bool:
    if not isinstance(raw, (bool, np.bool_)):
        raise InvalidParameterError(f"raw must be True or False; got {raw!r}.")
    return bool(raw)


def _load_digits(
    root: PathLike | None = None, *, test_size: float | int = 0.25, split_seed: int = 0,
    raw: bool = False,
) -> tuple[IndexedDataset, IndexedDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    del root  # bundled with scikit-learn
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.number)):
        raise InvalidParameterError(f"test_size must be a float in (0, 1); got {test_size!r}.")
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise InvalidParameterError(f"test_size must be in (0, 1); got {test_size!r}.")
    seed = _check_int(split_seed, "split_seed", minimum=0)
    keep_uint8 = _check_raw(raw)
    bunch = load_digits()
    if keep_uint8:  # the pixel counts 0..16 as stored; x * 1/16 is exact: the same bits
        X = np.asarray(bunch.data).astype(np.uint8)
    else:
        X = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    X = X.reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    if isinstance(test_size, (int, np.integer)) and not 10 <= int(test_size) <= len(y) - 10:
        raise InvalidParameterError(
            f"test_size as a count must be between 10 and {len(y) - 10}; got {test_size!r}."
        )
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y, shuffle=True
    )
    ids_tr, ids_te = _split_ids(len(y_tr), len(y_te))
    transform = Scale(1 / 16) if keep_uint8 else None
    return (
        IndexedDataset(X_tr, y_tr, ids_tr, n_classes=10, transform=transform),
        IndexedDataset(X_te, y_te, ids_te, n_classes=10, transform=transform),
    )


# ============================================================================ mnist
_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _mnist_candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")
    return [stem, f"{stem}.gz", dotted, f"{dotted}.gz"]


def _find_mnist_file(folder: Path, stem: str) -> Path:
    for candidate in _mnist_candidates(stem):
        path = folder / candidate
        if path.is_file():
            return path
    expected = ", ".join(f"{s}[.gz]" for s in _MNIST_STEMS)
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise DatasetError(
        f"file {stem!r} (raw or .gz) is missing from {str(folder)!r}. The folder must hold "
        f"the 4 IDX files {expected}; it holds {present or 'nothing'}. If root is the parent "
        "folder, point it at the mnist folder itself."
    )


def _load_mnist(
    root: PathLike | None = None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    raw: bool = False,
) -> tuple[IndexedDataset, IndexedDataset]:
    keep_uint8 = _check_raw(raw)
    limit_tr = _check_int(limit_train, "limit_train", minimum=1, allow_none=True)
    limit_te = _check_int(limit_test, "limit_test", minimum=1, allow_none=True)
    folder = _need_folder("mnist", root, "the 4 MNIST IDX files")
    paths = [_find_mnist_file(folder, stem) for stem in _MNIST_STEMS]
    arrays = [read_idx(p) for p in paths]
    splits = []
    for split, (img_path, lab_path), (images, labels), limit in (
        ("training", paths[0:2], arrays[0:2], limit_tr),
        ("test", paths[2:4], arrays[2:4], limit_te),
    ):
        if images.ndim != 3:
            raise DatasetError(
                f"file {str(img_path)!r} must hold 3-D images (n, height, width); "
                f"got shape {images.shape}."
            )
        if images.dtype != np.uint8:
            raise DatasetError(
                f"file {str(img_path)!r} must hold uint8 pixels (IDX type 0x08); "
                f"got {images.dtype}."
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(
                f"file {str(lab_path)!r} must hold 1-D integer labels; "
                f"got shape {labels.shape} of {labels.dtype}."
            )
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"the {split} split has {images.shape[0]} images in {str(img_path)!r} but "
                f"{labels.shape[0]} labels in {str(lab_path)!r}; the counts must match."
            )
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
            raise DatasetError(
                f"file {str(lab_path)!r} holds labels outside 0..255 "
                f"(min {int(labels.min())}, max {int(labels.max())})."
            )
        if limit is not None and limit > images.shape[0]:
            option = "limit_train" if split == "training" else "limit_test"
            raise InvalidParameterError(
                f"{option}={limit} exceeds the {images.shape[0]} {split} samples in "
                f"{str(img_path)!r}; pass None to load them all."
            )
        splits.append((images, labels.astype(np.int64), limit))
    if splits[0][0].shape[1:] != splits[1][0].shape[1:]:
        raise DatasetError(
            f"training images are {splits[0][0].shape[1:]} but test images are "
            f"{splits[1][0].shape[1:]} in {str(folder)!r}; both splits must match."
        )
    n_classes = max((int(lab.max()) + 1 for _, lab, _ in splits if lab.size), default=0)
    (img_tr, lab_tr, lim_tr), (img_te, lab_te, lim_te) = splits
    img_tr, lab_tr = img_tr[:lim_tr], lab_tr[:lim_tr]
    img_te, lab_te = img_te[:lim_te], lab_te[:lim_te]
    ids_tr, ids_te = _split_ids(len(lab_tr), len(lab_te))

    def to_float(images: np.ndarray) -> np.ndarray:
        out = images.astype(np.float32)
        out /= np.float32(255.0)
        return out[:, None, :, :]

    if keep_uint8:  # (x - 0) / 255 per batch: the same float32 bits as to_float
        transform = Normalize(0.0, 255.0)
        return (
            IndexedDataset(img_tr[:, None, :, :], lab_tr, ids_tr, n_classes=n_classes,
                           transform=transform),
            IndexedDataset(img_te[:, None, :, :], lab_te, ids_te, n_classes=n_classes,
                           transform=transform),
        )
    return (
        IndexedDataset(to_float(img_tr), lab_tr, ids_tr, n_classes=n_classes),
        IndexedDataset(to_float(img_te), lab_te, ids_te, n_classes=n_classes),
    )


# ============================================================================ adult
_ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
)
_ADULT_NUMERIC = (0, 2, 4, 10, 11, 12)
_ADULT_LOG1P = (10, 11)
_ADULT_CATEGORICAL = (1, 3, 5, 6, 7, 8, 9, 13)
_ADULT_MISSING = "missing"


def _read_adult_file(path: Path) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Rows (14 string fields each), labels, and numeric columns (float64) of one file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(
            f"file {str(path)!r} does not exist; the adult folder must hold adult.data and "
            "adult.test from the UCI Adult dataset."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"file {str(path)!r} could not be read as text: {err}") from err
    rows: list[list[str]] = []
    labels: list[int] = []
    numeric: list[list[float]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("|"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        if len(fields) != len(_ADULT_COLUMNS):
            raise DatasetError(
                f"file {str(path)!r}, line {line_no}: expected {len(_ADULT_COLUMNS)} "
                f"comma-separated fields, found {len(fields)}: {stripped[:80]!r}."
            )
        income = fields[14].rstrip(".")
        if income == ">50K":
            labels.append(1)
        elif income == "<=50K":
            labels.append(0)
        else:
            raise DatasetError(
                f"file {str(path)!r}, line {line_no}: the income field must be '>50K' or "
                f"'<=50K' (optionally ending in '.'); found {fields[14]!r}."
            )
        values = []
        for col in _ADULT_NUMERIC:
            try:
                values.append(float(fields[col]))
            except ValueError:
                raise DatasetError(
                    f"file {str(path)!r}, line {line_no}: column {_ADULT_COLUMNS[col]!r} must "
                    f"be a number; found {fields[col]!r}."
                ) from None
        numeric.append(values)
        rows.append(fields[:14])
    if not rows:
        raise DatasetError(f"file {str(path)!r} holds no data rows.")
    return rows, np.asarray(labels, dtype=np.int64), np.asarray(numeric, dtype=np.float64)


def _load_adult(
    root: PathLike | None = None, *, drop_missing: bool = False
) -> tuple[IndexedDataset, IndexedDataset]:
    if not isinstance(drop_missing, (bool, np.bool_)):
        raise InvalidParameterError(f"drop_missing must be True or False; got {drop_missing!r}.")
    folder = _need_folder("adult", root, "adult.data and adult.test")
    parsed = [_read_adult_file(folder / name) for name in ("adult.data", "adult.test")]
    ids = list(_split_ids(len(parsed[0][0]), len(parsed[1][0])))
    if drop_missing:
        for i, (rows, labels, numeric) in enumerate(parsed):
            keep = np.fromiter(("?" not in r for r in rows), dtype=bool, count=len(rows))
            parsed[i] = ([r for r, k in zip(rows, keep, strict=True) if k], labels[keep],
                         numeric[keep])
            ids[i] = ids[i][keep]
        if not parsed[0][0]:
            raise DatasetError(f"every row of {str(folder / 'adult.data')!r} has a missing value.")
    (rows_tr, y_tr, num_tr), (rows_te, y_te, num_te) = parsed

    # numeric: log1p on the capital columns, then standardise with training statistics
    log_cols = [_ADULT_NUMERIC.index(c) for c in _ADULT_LOG1P]
    for num in (num_tr, num_te):
        num[:, log_cols] = np.log1p(np.maximum(num[:, log_cols], 0.0))
    mean = num_tr.mean(axis=0)
    std = num_tr.std(axis=0)
    std[std == 0] = 1.0

    # categorical: one block per column, categories from the training split, sorted
    def category(value: str) -> str:
        return _ADULT_MISSING if value == "?" else value

    vocabularies = [
        sorted({category(r[col]) for r in rows_tr}) for col in _ADULT_CATEGORICAL
    ]
    n_features = len(_ADULT_NUMERIC) + sum(len(v) for v in vocabularies)

    def encode(rows: list[list[str]], num: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), n_features), dtype=np.float32)
        out[:, : len(_ADULT_NUMERIC)] = (num - mean) / std
        offset = len(_ADULT_NUMERIC)
        for col, vocab in zip(_ADULT_CATEGORICAL, vocabularies, strict=True):
            index = {v: i for i, v in enumerate(vocab)}
            codes = np.fromiter(
                (index.get(category(r[col]), -1) for r in rows), dtype=np.int64, count=len(rows)
            )
            known = codes >= 0
            out[np.flatnonzero(known), offset + codes[known]] = 1.0
            offset += len(vocab)
        return out

    return (
        IndexedDataset(encode(rows_tr, num_tr), y_tr, ids[0], n_classes=2),
        IndexedDataset(encode(rows_te, num_te), y_te, ids[1], n_classes=2),
    )


# ============================================================================ npz
def load_npz(path: PathLike) -> tuple[IndexedDataset, IndexedDataset]:
    """Load ``(train, test)`` from a ``.npz`` file (read without pickle).

    The file must hold ``X_train``, ``y_train``, ``X_test`` and ``y_test`` (labels integer,
    ``>= 0``); ``ids_train`` and ``ids_test`` are optional and default to the train/test id
    scheme of the module docstring. Both splits get ``n_classes`` = the largest label in
    either split plus one, and must have the same input shape and disjoint ids.

    Raises:
        DatasetError: naming the file when it is missing, unreadable, lacks an array, or its
            arrays disagree.
    """
    p = Path(path).expanduser()
    name = str(p)
    if not p.is_file():
        raise DatasetError(
            f"file {name!r} does not exist; pass the path of a .npz file holding X_train, "
            "y_train, X_test and y_test."
        )
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {key: np.asarray(npz[key]) for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile) as err:
        raise DatasetError(f"file {name!r} could not be read as a .npz archive: {err}") from err
    required = ("X_train", "y_train", "X_test", "y_test")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(
            f"file {name!r} lacks the arrays {missing}; it holds {sorted(arrays)}. A .npz "
            f"dataset needs {list(required)} (ids_train and ids_test are optional)."
        )
    for key in required:
        if arrays[key].dtype == object or not (
            np.issubdtype(arrays[key].dtype, np.number) or arrays[key].dtype == np.bool_
        ):
            raise DatasetError(f"{key} in {name!r} must be numeric; got {arrays[key].dtype}.")
    for split in ("train", "test"):
        X, y = arrays[f"X_{split}"], arrays[f"y_{split}"]
        if X.ndim < 1 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise DatasetError(
                f"X_{split} {X.shape} and y_{split} {y.shape} in {name!r} must have the same "
                "number of samples, with y 1-D."
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"y_{split} in {name!r} must hold integers; got {y.dtype}.")
        if y.size and int(y.min()) < 0:
            raise DatasetError(f"y_{split} in {name!r} has negative label {int(y.min())}.")
    if arrays["X_train"].shape[1:] != arrays["X_test"].shape[1:]:
        raise DatasetError(
            f"X_train samples have shape {arrays['X_train'].shape[1:]} but X_test samples "
            f"{arrays['X_test'].shape[1:]} in {name!r}; they must match."
        )
    n_train, n_test = len(arrays["y_train"]), len(arrays["y_test"])
    default_ids = _split_ids(n_train, n_test)
    ids = [arrays.get("ids_train", default_ids[0]), arrays.get("ids_test", default_ids[1])]
    if np.intersect1d(np.asarray(ids[0]).ravel(), np.asarray(ids[1]).ravel()).size:
        raise DatasetError(f"ids_train and ids_test in {name!r} share ids; they must be disjoint.")
    labels = [arrays["y_train"], arrays["y_test"]]
    n_classes = max((int(y.max()) + 1 for y in labels if y.size), default=0)
    try:
        return (
            IndexedDataset(arrays["X_train"], labels[0], ids[0], n_classes=n_classes),
            IndexedDataset(arrays["X_test"], labels[1], ids[1], n_classes=n_classes),
        )
    except ValueError as err:
        raise DatasetError(f"file {name!r}: {err}") from err


def _load_npz(root: PathLike | None = None) -> tuple[IndexedDataset, IndexedDataset]:
    return load_npz(
        _need_root("npz", root, "a .npz file with X_train, y_train, X_test, y_test",
                   "data/my_dataset.npz")
    )


# ============================================================================ registry
_LOADERS: dict[str, tuple[Callable[..., tuple[IndexedDataset, IndexedDataset]], tuple[str, ...]]]
_LOADERS = {
    "adult": (_load_adult, ("drop_missing",)),
    "digits": (_load_digits, ("test_size", "split_seed", "raw")),
    "mnist": (_load_mnist, ("limit_train", "limit_test", "raw")),
    "npz": (_load_npz, ()),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_LOADERS)


def load_dataset(
    name: str, root: PathLike | None = None, **options: Any
) -> tuple[IndexedDataset, IndexedDataset]:
    """Load a dataset as ``(train, test)`` from local files; nothing is ever downloaded.

    Args:
        name: one of :func:`available_datasets` (case-insensitive): ``"digits"``
            (bundled with scikit-learn; ``root`` ignored), ``"mnist"`` (folder of 4 IDX
            files), ``"adult"`` (folder with adult.data and adult.test), ``"npz"`` (a .npz
            file path).
        root: folder (or, for ``"npz"``, file) holding the data, e.g.
            ``"../shared/datasets/mnist"``.
        **options: per-dataset options: digits ``test_size`` (0.25), ``split_seed`` (0),
            ``raw`` (False); mnist ``limit_train``, ``limit_test`` (None = all), ``raw``
            (False); adult ``drop_missing`` (False). See the module docstring for the
            encodings. ``raw=True`` keeps the pixels as stored (uint8) with the input
            transform that gives the model the same float32 values, bit for bit, as the
            default: a quarter of the memory and of the store.

    Returns:
        ``(train, test)``; training ids are ``0..n_train-1`` and test ids start at
        ``TEST_ID_OFFSET``, so they never collide. Deterministic.

    Raises:
        InvalidParameterError: unknown name or option, or ``root`` missing where needed.
        DatasetError: a file is missing, truncated or malformed (the message names it).
    """
    if not isinstance(name, str):
        raise InvalidParameterError(
            f"name must be a string, one of {available_datasets()}; got {name!r}."
        )
    key = name.strip().lower()
    if key not in _LOADERS:
        raise InvalidParameterError(
            f"unknown dataset {name!r}; available: {', '.join(available_datasets())}."
        )
    loader, accepted = _LOADERS[key]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidParameterError(
            f"unknown option(s) {unknown} for dataset {key!r}; accepted: "
            f"{', '.join(accepted) if accepted else 'none'}."
        )
    return loader(root, **options)


# ============================================================================ samplers
def random_forget_ids(
    dataset: IndexedDataset,
    fraction: float | None = None,
    n: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """A uniformly random forget set of ids from ``dataset``, sorted ascending.

    Give exactly one of ``fraction`` (in ``(0, 1]``; ``round(fraction * len(dataset))``
    ids, at least 1) or ``n`` (``1 <= n <= len(dataset)``). Sampling is without
    replacement from the dataset's sorted ids with ``np.random.default_rng(seed)``, so the
    result depends only on the set of ids, the size and the seed (not on sample order).
    """
    if not isinstance(dataset, IndexedDataset):
        raise InvalidParameterError(
            f"dataset must be an IndexedDataset; got {type(dataset).__name__}."
        )
    if (fraction is None) == (n is None):
        raise InvalidParameterError(
            "give exactly one of fraction= (share of the dataset) or n= (number of ids); "
            f"got fraction={fraction!r}, n={n!r}."
        )
    seed_i = _check_int(seed, "seed", minimum=0)
    total = len(dataset)
    if total == 0:
        raise InvalidParameterError("cannot sample a forget set from an empty dataset.")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)):
            raise InvalidParameterError(f"fraction must be a number in (0, 1]; got {fraction!r}.")
        frac = float(fraction)
        if not 0.0 < frac <= 1.0:
            raise InvalidParameterError(f"fraction must be in (0, 1]; got {fraction!r}.")
        size = max(1, min(total, math.floor(frac * total + 0.5)))
    else:
        size = _check_int(n, "n", minimum=1) or 0
        if size > total:
            raise InvalidParameterError(
                f"n={size} exceeds the {total} samples of the dataset; pass n <= {total}."
            )
    pool = np.sort(dataset.ids)
    rng = np.random.default_rng(seed_i)
    chosen = rng.choice(total, size=size, replace=False)
    return np.sort(pool[chosen]).astype(np.int64)


def class_forget_ids(dataset: IndexedDataset, label: int) -> np.ndarray:
    """Ids of every sample labelled ``label`` (class unlearning), sorted ascending.

    Raises:
        InvalidParameterError: ``label`` is not an int in ``0..n_classes-1``, or no sample
            has it.
    """
    if not isinstance(dataset, IndexedDataset):
        raise InvalidParameterError(
            f"dataset must be an IndexedDataset; got {type(dataset).__name__}."
        )
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise InvalidParameterError(f"label must be an int; got {label!r}.")
    if not 0 <= int(label) < dataset.n_classes:
        raise InvalidParameterError(
            f"label {label!r} is outside 0..{dataset.n_classes - 1} (the dataset has "
            f"{dataset.n_classes} classes)."
        )
    ids = np.sort(dataset.ids_of_class(int(label))).astype(np.int64)
    if ids.size == 0:
        raise InvalidParameterError(
            f"no sample of this dataset has label {int(label)}; the forget set would be empty."
        )
    return ids


# ============================================================================ download
#: SHA-256 of the upstream MNIST files (as published; see shared/datasets/SHA256SUMS).
MNIST_SHA256: Mapping[str, str] = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: The mirror torchvision uses (Yann LeCun's own site often refuses scripted downloads).
MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(
    root: PathLike, base_url: str = MNIST_BASE_URL, *, timeout: float = 60.0
) -> Path:
    """Download the 4 gzipped MNIST files into ``root`` and verify their SHA-256.

    A file already in ``root`` with the right checksum is kept. Each download goes to a
    temporary file in ``root`` that is renamed into place only after its SHA-256 matches
    :data:`MNIST_SHA256`, so ``root`` never holds a partial or wrong file. Nothing in
    expunge calls this; :func:`load_dataset` only reads local files.

    Args:
        root: folder to write into (created if needed).
        base_url: folder URL holding the files (``http(s)://`` or ``file://``).
        timeout: seconds per connection attempt.

    Returns:
        ``root`` as a :class:`~pathlib.Path`, ready for ``load_dataset("mnist", root)``.

    Raises:
        DatasetError: a download failed or a checksum did not match (the file is not
            written).
    """
    folder = Path(root).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create the folder {str(folder)!r}: {err}") from err
    base = base_url if base_url.endswith("/") else base_url + "/"
    for filename, expected in MNIST_SHA256.items():
        target = folder / filename
        if target.is_file() and _sha256_file(target) == expected:
            continue
        url = base + filename
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as response:
                        while chunk := response.read(1 << 20):
                            h.update(chunk)
                            out.write(chunk)
                except (urllib.error.URLError, OSError, ValueError) as err:
                    raise DatasetError(f"downloading {url!r} failed: {err}") from err
                out.flush()
                os.fsync(out.fileno())
            got = h.hexdigest()
            if got != expected:
                raise DatasetError(
                    f"the file downloaded from {url!r} has SHA-256 {got}, expected {expected}; "
                    f"it was not written to {str(target)!r}. The mirror may be serving another "
                    "file: try another base_url."
                )
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return folder
