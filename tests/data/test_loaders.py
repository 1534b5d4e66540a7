"""Loaders (digits, IDX/MNIST, Adult, npz), forget-set samplers and the MNIST download helper."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from expunge.data import (
    TEST_ID_OFFSET,
    IndexedDataset,
    available_datasets,
    class_forget_ids,
    download_mnist,
    load_dataset,
    load_npz,
    random_forget_ids,
    read_idx,
)
from expunge.data._loaders import MNIST_SHA256
from expunge.exceptions import DatasetError, InvalidParameterError

SHARED = (Path(__file__).parents[2] / ".." / "shared" / "datasets").resolve()
MNIST_DIR = SHARED / "mnist"
ADULT_DIR = SHARED / "adult"

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ============================================================================ helpers
def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Serialise ``array`` as IDX with the given type code (big-endian data)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=dtype[type_code]).tobytes()


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    data = idx_bytes(array, type_code)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_fake_mnist(
    folder: Path, *, n_train: int = 12, n_test: int = 5, hw: tuple[int, int] = (4, 3),
    gz: bool = False, dotted: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, size=(n_train, *hw), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, size=(n_test, *hw), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(MNIST_FILES, arrays, strict=True):
        name = stem.replace("-idx", ".idx") if dotted else stem
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


ADULT_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, "
    "Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, "
    "White, Male, 0, 0, 13, United-States, >50K",
    "38, ?, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Male, 0, 0, "
    "40, United-States, <=50K",
    "53, Private, 234721, 11th, 7, Married-civ-spouse, Handlers-cleaners, Husband, Black, Male, "
    "0, 0, 40, ?, >50K",
]
ADULT_TEST_ROWS = [
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, "
    "0, 0, 40, United-States, <=50K.",
    "44, Federal-gov, 160323, Doctorate, 16, Married-civ-spouse, Prof-specialty, Husband, "
    "Asian-Pac-Islander, Female, 7688, 0, 40, Canada, >50K.",
]


def write_adult(folder: Path, train: list[str], test: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text("\n".join(train) + "\n\n")
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(test) + "\n\n")
    return folder


# ============================================================================ registry
def test_available_datasets() -> None:
    assert available_datasets() == ["adult", "digits", "mnist", "npz"]


def test_unknown_name_lists_available() -> None:
    with pytest.raises(InvalidParameterError, match=r"'cifar10'.*adult, digits, mnist"):
        load_dataset("cifar10")
    with pytest.raises(InvalidParameterError, match=r"string"):
        load_dataset(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mnist", "adult", "npz"])
def test_missing_root_explains_no_downloads(name: str) -> None:
    with pytest.raises(InvalidParameterError, match=r"never downloads") as info:
        load_dataset(name)
    assert "../shared/datasets/mnist" in str(info.value)


def test_root_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"nowhere"):
        load_dataset("mnist", missing)
    with pytest.raises(DatasetError, match=r"nowhere"):
        load_dataset("adult", missing)


def test_unknown_option() -> None:
    with pytest.raises(InvalidParameterError, match=r"limit_train.*test_size, split_seed"):
        load_dataset("digits", limit_train=3)


# ============================================================================ digits
@pytest.fixture(scope="module")
def digits() -> tuple[IndexedDataset, IndexedDataset]:
    return load_dataset("digits")


def test_digits_shapes_and_range(digits: tuple[IndexedDataset, IndexedDataset]) -> None:
    train, test = digits
    assert len(train) + len(test) == 1797
    assert len(test) == 450
    assert train.input_shape == test.input_shape == (1, 8, 8)
    assert train.n_classes == test.n_classes == 10
    assert float(train.X.min()) >= 0.0
    assert float(train.X.max()) == 1.0
    assert float(test.X.max()) <= 1.0


def test_digits_ids_disjoint(digits: tuple[IndexedDataset, IndexedDataset]) -> None:
    train, test = digits
    assert train.ids.tolist() == list(range(len(train)))
    assert test.ids.tolist() == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + len(test)))
    assert not np.intersect1d(train.ids, test.ids).size


def test_digits_deterministic_and_stratified(
    digits: tuple[IndexedDataset, IndexedDataset],
) -> None:
    train, test = digits
    again_train, again_test = load_dataset("digits")
    assert again_train.fingerprint() == train.fingerprint()
    assert again_test.fingerprint() == test.fingerprint()
    share = np.array(test.class_counts()) / np.array(train.class_counts())
    assert np.all(np.abs(share - 1 / 3) < 0.03)
    other, _ = load_dataset("digits", split_seed=1)
    assert other.fingerprint() != train.fingerprint()


def test_digits_options() -> None:
    train, test = load_dataset("DIGITS", test_size=0.5)
    assert abs(len(test) - len(train)) <= 1
    with pytest.raises(InvalidParameterError, match=r"test_size"):
        load_dataset("digits", test_size=1.5)
    with pytest.raises(InvalidParameterError, match=r"split_seed"):
        load_dataset("digits", split_seed=-1)


# ============================================================================ read_idx
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), array)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 99  # writable copy


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_read_idx_other_types(tmp_path: Path, code: int, dtype: type) -> None:
    array = (np.arange(6) - 3).astype(dtype) * 3
    out = read_idx(write_idx(tmp_path / "x.idx", array, code))
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_gzip_detected_without_suffix(tmp_path: Path) -> None:
    array = np.arange(5, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nothing-here-idx1-ubyte"):
        read_idx(tmp_path / "nothing-here-idx1-ubyte")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_bad_magic(tmp_path: Path, gz: bool) -> None:
    data = b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x01"
    path = tmp_path / ("bad-magic" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError, match=r"bad-magic.*not an IDX file"):
        read_idx(path)


def test_read_idx_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "weird-type"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DatasetError, match=r"weird-type.*type code 0x07"):
        read_idx(path)


def test_read_idx_too_short(tmp_path: Path) -> None:
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match=r"tiny"):
        read_idx(path)
    header_cut = tmp_path / "header-cut"
    header_cut.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(DatasetError, match=r"header-cut.*truncated"):
        read_idx(header_cut)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_data(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))[:-5]
    path = tmp_path / ("short-images" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(
        DatasetError, match=r"short-images.*truncated: header declares 48 bytes of data.*found 43"
    ):
        read_idx(path)


def test_read_idx_trailing_garbage(tmp_path: Path) -> None:
    path = tmp_path / "long-labels"
    path.write_bytes(idx_bytes(np.arange(4, dtype=np.uint8)) + b"junk")
    with pytest.raises(DatasetError, match=r"long-labels.*4 unexpected bytes"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    cut = tmp_path / "cut-labels.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"cut-labels.gz.*gzip"):
        read_idx(cut)
    garbled = tmp_path / "garbled-labels.gz"
    garbled.write_bytes(good[:10] + bytes(b ^ 0xFF for b in good[10:30]) + good[30:])
    with pytest.raises(DatasetError, match=r"garbled-labels.gz.*gzip"):
        read_idx(garbled)
    not_gzip = tmp_path / "plain-labels.gz"
    not_gzip.write_bytes(idx_bytes(np.arange(3, dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"plain-labels.gz.*not a gzip file"):
        read_idx(not_gzip)


# ============================================================================ mnist (fake files)
@pytest.mark.parametrize(("gz", "dotted"), [(False, False), (True, False), (True, True)])
def test_mnist_loader_on_small_idx_set(tmp_path: Path, gz: bool, dotted: bool) -> None:
    img_tr, _, _, lab_te = write_fake_mnist(tmp_path, gz=gz, dotted=dotted)
    train, test = load_dataset("mnist", tmp_path)
    assert train.input_shape == test.input_shape == (1, 4, 3)
    assert train.X.dtype.is_floating_point
    np.testing.assert_allclose(train.X.numpy()[:, 0], img_tr / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.y.numpy(), lab_te)
    assert train.ids.tolist() == list(range(12))
    assert test.ids.tolist() == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + 5))
    assert train.n_classes == test.n_classes == 10


def test_mnist_limits(tmp_path: Path) -> None:
    _, lab_tr, _, _ = write_fake_mnist(tmp_path)
    train, test = load_dataset("mnist", tmp_path, limit_train=4, limit_test=2)
    assert len(train) == 4
    assert len(test) == 2
    np.testing.assert_array_equal(train.y.numpy(), lab_tr[:4])
    assert train.n_classes == 10  # from the full label set, not the prefix
    with pytest.raises(InvalidParameterError, match=r"limit_train=100 exceeds the 12"):
        load_dataset("mnist", tmp_path, limit_train=100)
    with pytest.raises(InvalidParameterError, match=r"limit_test"):
        load_dataset("mnist", tmp_path, limit_test=0)
    with pytest.raises(InvalidParameterError, match=r"limit_train"):
        load_dataset("mnist", tmp_path, limit_train=2.5)


def test_mnist_prefers_raw_when_both_exist(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not even gzip")
    train, _ = load_dataset("mnist", tmp_path)
    assert len(train) == 12


def test_mnist_missing_file_named(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert str(tmp_path) in message


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"12 images in .*train-images.*11 labels in .*train-l"):
        load_dataset("mnist", tmp_path)


def test_mnist_images_must_be_3d_uint8(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 12), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.*3-D"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 4, 3)), 0x0D)
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.*uint8"):
        load_dataset("mnist", tmp_path)


def test_mnist_labels_range(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 300]), 0x0C)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.*0..255"):
        load_dataset("mnist", tmp_path)


def test_mnist_truncated_file_through_loader(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.? is truncated"):
        load_dataset("mnist", tmp_path)


# ============================================================================ mnist (real files)
@pytest.fixture(scope="module")
def mnist() -> tuple[IndexedDataset, IndexedDataset]:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    return load_dataset("mnist", MNIST_DIR)


@pytest.mark.data
def test_mnist_real_sizes_and_counts(mnist: tuple[IndexedDataset, IndexedDataset]) -> None:
    train, test = mnist
    assert len(train) == 60000
    assert len(test) == 10000
    assert train.input_shape == (1, 28, 28)
    assert train.class_counts() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.class_counts() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.y[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(float(train.X.mean()) - 0.1307) < 1e-3
    assert float(train.X.max()) == 1.0
    assert not np.intersect1d(train.ids, test.ids).size


@pytest.mark.data
def test_mnist_real_limit_is_prefix(mnist: tuple[IndexedDataset, IndexedDataset]) -> None:
    train, _ = mnist
    small, small_test = load_dataset("mnist", MNIST_DIR, limit_train=100, limit_test=10)
    assert len(small) == 100
    assert len(small_test) == 10
    assert small.fingerprint() == train.select(np.arange(100)).fingerprint()


# ============================================================================ adult (real files)
@pytest.fixture(scope="module")
def adult() -> tuple[IndexedDataset, IndexedDataset]:
    if not (ADULT_DIR / "adult.data").is_file():
        pytest.skip(f"Adult not found at {ADULT_DIR}")
    return load_dataset("adult", ADULT_DIR)


@pytest.mark.data
def test_adult_real(adult: tuple[IndexedDataset, IndexedDataset]) -> None:
    train, test = adult
    assert len(train) == 32561
    assert len(test) == 16281
    assert train.n_classes == test.n_classes == 2
    assert train.input_shape == test.input_shape
    assert train.X.ndim == 2
    assert abs(float(train.y.double().mean()) - 0.2408) < 5e-4
    assert abs(float(test.y.double().mean()) - 0.2362) < 5e-4
    numeric = train.X[:, :6].double()
    np.testing.assert_allclose(numeric.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(numeric.std(0, correction=0).numpy(), 1.0, atol=1e-4)
    # the test split is encoded with training statistics, so it is not exactly standardised
    assert float(test.X[:, :6].double().mean(0).abs().max()) > 1e-4
    one_hot = train.X[:, 6:]
    assert set(np.unique(one_hot.numpy()).tolist()) == {0.0, 1.0}
    # exactly one category per categorical column for every training row
    assert bool((one_hot.sum(1) == 8).all())
    assert not np.intersect1d(train.ids, test.ids).size


@pytest.mark.data
def test_adult_real_drop_missing(adult: tuple[IndexedDataset, IndexedDataset]) -> None:
    train, _ = adult
    complete, complete_test = load_dataset("adult", ADULT_DIR, drop_missing=True)
    assert len(complete) == 30162
    assert len(complete_test) == 15060
    assert np.isin(complete.ids, train.ids).all()  # ids are positions in the full file


# ============================================================================ adult (small files)
def test_adult_small_encoding(tmp_path: Path) -> None:
    write_adult(tmp_path, ADULT_ROWS, ADULT_TEST_ROWS)
    train, test = load_dataset("adult", tmp_path)
    assert len(train) == 4
    assert len(test) == 2
    assert train.y.tolist() == [0, 1, 0, 1]
    assert test.y.tolist() == [0, 1]
    # workclass categories from train only: Private, Self-emp-not-inc, State-gov, missing (?)
    # education: 11th, Bachelors, HS-grad; marital: 3; occupation: 3; relationship: 2;
    # race: 2; sex: 1; native-country: United-States, missing
    assert train.input_shape == (6 + 4 + 3 + 3 + 3 + 2 + 2 + 1 + 2,)
    X = train.X.numpy()
    workclass = X[:, 6:10]
    np.testing.assert_array_equal(workclass[2], [0, 0, 0, 1])  # "?" -> "missing", sorted last
    np.testing.assert_array_equal(workclass[0], [0, 0, 1, 0])  # State-gov
    np.testing.assert_allclose(X[:, :6].mean(0), 0.0, atol=1e-6)
    # test row 1: Federal-gov and Doctorate, Canada, Female, Asian-Pac-Islander were never
    # seen in training -> all-zero blocks
    T = test.X.numpy()
    np.testing.assert_array_equal(T[1, 6:10], 0.0)
    assert T[1, 6:].sum() == 8 - 6  # only marital-status and relationship known
    # capital-gain goes through log1p then training statistics
    raw_gain = np.log1p(np.array([2174.0, 0.0, 0.0, 0.0]))
    expected = (np.log1p(7688.0) - raw_gain.mean()) / raw_gain.std()
    assert T[1, 3] == pytest.approx(expected, rel=1e-5)


def test_adult_small_drop_missing_keeps_positions_as_ids(tmp_path: Path) -> None:
    write_adult(tmp_path, ADULT_ROWS, ADULT_TEST_ROWS)
    train, test = load_dataset("adult", tmp_path, drop_missing=True)
    assert train.ids.tolist() == [0, 1]
    assert test.ids.tolist() == [TEST_ID_OFFSET, TEST_ID_OFFSET + 1]
    with pytest.raises(InvalidParameterError, match=r"drop_missing"):
        load_dataset("adult", tmp_path, drop_missing="yes")


def test_adult_wrong_field_count(tmp_path: Path) -> None:
    rows = [*ADULT_ROWS[:2], "39, State-gov, 77516, <=50K", ADULT_ROWS[3]]
    write_adult(tmp_path, rows, ADULT_TEST_ROWS)
    with pytest.raises(DatasetError, match=r"adult\.data'?, line 3: expected 15.*found 4"):
        load_dataset("adult", tmp_path)


def test_adult_bad_label_in_test_file(tmp_path: Path) -> None:
    bad = ADULT_TEST_ROWS[0].replace("<=50K.", "maybe")
    write_adult(tmp_path, ADULT_ROWS, [ADULT_TEST_ROWS[1], bad])
    # line 1 is the "|1x3 Cross validator" header, so the bad row is line 3
    with pytest.raises(DatasetError, match=r"adult\.test'?, line 3: the income field.*'maybe'"):
        load_dataset("adult", tmp_path)


def test_adult_bad_number(tmp_path: Path) -> None:
    rows = [ADULT_ROWS[0].replace("39,", "thirty-nine,", 1), *ADULT_ROWS[1:]]
    write_adult(tmp_path, rows, ADULT_TEST_ROWS)
    with pytest.raises(DatasetError, match=r"adult\.data'?, line 1: column 'age'.*thirty-nine"):
        load_dataset("adult", tmp_path)


def test_adult_missing_or_empty_file(tmp_path: Path) -> None:
    write_adult(tmp_path, ADULT_ROWS, ADULT_TEST_ROWS)
    (tmp_path / "adult.test").unlink()
    with pytest.raises(DatasetError, match=r"adult\.test.*does not exist"):
        load_dataset("adult", tmp_path)
    write_adult(tmp_path, [], ADULT_TEST_ROWS)
    with pytest.raises(DatasetError, match=r"adult\.data.*no data rows"):
        load_dataset("adult", tmp_path)


# ============================================================================ npz
def test_npz_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "toy.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path, X_train=rng.normal(size=(6, 3)), y_train=np.array([0, 1, 2, 0, 1, 2]),
        X_test=rng.normal(size=(2, 3)), y_test=np.array([1, 3]),
    )
    train, test = load_dataset("npz", path)
    assert len(train) == 6
    assert len(test) == 2
    assert train.n_classes == test.n_classes == 4
    assert test.ids.tolist() == [TEST_ID_OFFSET, TEST_ID_OFFSET + 1]
    assert load_npz(path)[0].fingerprint() == train.fingerprint()


def test_npz_custom_ids_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ids.npz"
    np.savez(path, X_train=np.zeros((2, 1)), y_train=[0, 1], X_test=np.zeros((1, 1)),
             y_test=[1], ids_train=[10, 20], ids_test=[30])
    train, test = load_npz(path)
    assert train.ids.tolist() == [10, 20]
    assert test.ids.tolist() == [30]

    overlap = tmp_path / "overlap.npz"
    np.savez(overlap, X_train=np.zeros((2, 1)), y_train=[0, 1], X_test=np.zeros((1, 1)),
             y_test=[1], ids_train=[10, 20], ids_test=[20])
    with pytest.raises(DatasetError, match=r"overlap.npz.*disjoint"):
        load_npz(overlap)

    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, X_train=np.zeros((2, 1)), y_train=[0, 1])
    with pytest.raises(DatasetError, match=r"lacking\.npz.*\['X_test', 'y_test'\]"):
        load_npz(lacking)

    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, X_train=np.zeros((3, 1)), y_train=[0, 1], X_test=np.zeros((1, 1)),
             y_test=[1])
    with pytest.raises(DatasetError, match=r"mismatch.npz"):
        load_npz(mismatch)

    float_labels = tmp_path / "floaty.npz"
    np.savez(float_labels, X_train=np.zeros((2, 1)), y_train=[0.0, 1.5],
             X_test=np.zeros((1, 1)), y_test=[1])
    with pytest.raises(DatasetError, match=r"floaty.npz.*integers"):
        load_npz(float_labels)

    with pytest.raises(DatasetError, match=r"absent.npz"):
        load_npz(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DatasetError, match=r"garbage.npz"):
        load_npz(garbage)


# ============================================================================ samplers
def toy(n: int = 50) -> IndexedDataset:
    return IndexedDataset(np.zeros((n, 1)), np.arange(n) % 5, np.arange(100, 100 + n))


def test_random_forget_ids_deterministic_sorted() -> None:
    ds = toy()
    a = random_forget_ids(ds, fraction=0.1, seed=3)
    assert a.dtype == np.int64
    assert len(a) == 5
    assert np.all(np.diff(a) > 0)
    assert np.isin(a, ds.ids).all()
    np.testing.assert_array_equal(a, random_forget_ids(ds, fraction=0.1, seed=3))
    assert not np.array_equal(a, random_forget_ids(ds, fraction=0.1, seed=4))
    # depends on the set of ids, not on their order
    shuffled = ds.select(ds.ids[::-1])
    np.testing.assert_array_equal(a, random_forget_ids(shuffled, fraction=0.1, seed=3))


def test_random_forget_ids_sizes() -> None:
    ds = toy()
    assert len(random_forget_ids(ds, n=7)) == 7
    assert len(random_forget_ids(ds, fraction=1.0)) == 50
    assert len(random_forget_ids(ds, fraction=0.001)) == 1  # at least one id
    np.testing.assert_array_equal(random_forget_ids(ds, n=50), np.sort(ds.ids))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"fraction": 0.1, "n": 3}, "exactly one"),
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({"fraction": -0.2}, r"\(0, 1\]"),
        ({"n": 51}, "n=51 exceeds the 50"),
        ({"n": 0}, "n must be >= 1"),
        ({"n": 2.0}, "n must be an int"),
        ({"n": 2, "seed": -1}, "seed"),
    ],
)
def test_random_forget_ids_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        random_forget_ids(toy(), **kwargs)  # type: ignore[arg-type]


def test_class_forget_ids() -> None:
    ds = toy(20)
    ids = class_forget_ids(ds, 2)
    assert ids.tolist() == [102, 107, 112, 117]
    with pytest.raises(InvalidParameterError, match=r"outside 0..4"):
        class_forget_ids(ds, 5)
    with pytest.raises(InvalidParameterError, match=r"int"):
        class_forget_ids(ds, 1.0)  # type: ignore[arg-type]
    empty_class = IndexedDataset(np.zeros((2, 1)), [0, 0], n_classes=3)
    with pytest.raises(InvalidParameterError, match=r"no sample"):
        class_forget_ids(empty_class, 2)


# ============================================================================ download_mnist
def test_download_mnist_checksum_mismatch(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in MNIST_SHA256:
        (mirror / name).write_bytes(b"not mnist")
    target = tmp_path / "target"
    with pytest.raises(DatasetError, match=r"SHA-256") as info:
        download_mnist(target, mirror.as_uri())
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert list(target.iterdir()) == []  # nothing written, no partial files left


def test_download_mnist_unreachable(tmp_path: Path) -> None:
    target = tmp_path / "target"
    with pytest.raises(DatasetError, match=r"downloading .*failed"):
        download_mnist(target, (tmp_path / "empty-mirror").as_uri())
    assert list(target.iterdir()) == []


@pytest.mark.data
def test_download_mnist_from_local_mirror(tmp_path: Path) -> None:
    if not all((MNIST_DIR / name).is_file() for name in MNIST_SHA256):
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    target = tmp_path / "mnist"
    assert download_mnist(target, MNIST_DIR.as_uri() + "/") == target
    assert sorted(p.name for p in target.iterdir()) == sorted(MNIST_SHA256)
    for name, digest in MNIST_SHA256.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest
    # files already present and verified are kept (the broken mirror is never read)
    before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    download_mnist(target, (tmp_path / "no-such-mirror").as_uri())
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before


@pytest.mark.data
def test_sha256_table_matches_shared_sums() -> None:
    sums = SHARED / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(f"{sums} not found")
    published = {}
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        published[rel] = digest
    for name, digest in MNIST_SHA256.items():
        assert published[f"mnist/{name}"] == digest
