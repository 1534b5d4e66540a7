"""Data: :class:`IndexedDataset` (samples with stable ids), local loaders and forget-set samplers.

``load_dataset(name, root)`` returns ``(train, test)`` from local files only; training ids are
``0..n_train-1`` and test ids start at ``TEST_ID_OFFSET`` (1_000_000) so the two never collide.
"""

from expunge.data._dataset import IndexedDataset, as_id_array, as_subject_array
from expunge.data._loaders import (
    TEST_ID_OFFSET,
    available_datasets,
    class_forget_ids,
    download_mnist,
    load_dataset,
    load_npz,
    random_forget_ids,
    read_idx,
)

__all__ = [
    "TEST_ID_OFFSET",
    "IndexedDataset",
    "as_id_array",
    "as_subject_array",
    "available_datasets",
    "class_forget_ids",
    "download_mnist",
    "load_dataset",
    "load_npz",
    "random_forget_ids",
    "read_idx",
]
