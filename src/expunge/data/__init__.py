"""Data: :class:`IndexedDataset` (samples with stable ids), local loaders and forget-set samplers.

``load_dataset(name, root)`` returns ``(train, test)`` from local files only; training ids are
``0..n_train-1`` and test ids start at ``TEST_ID_OFFSET`` (1_000_000) so the two never collide.

Inputs keep their stored dtype; a recorded transform (:class:`Scale`, :class:`Normalize`)
makes the model's float32 inputs per batch. See docs/data.md.
"""

from expunge.data._dataset import IndexedDataset, InputBatches, as_id_array, as_subject_array
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
from expunge.data._transforms import (
    Identity,
    Normalize,
    Scale,
    Transform,
    as_transform,
    transform_from_dict,
)

__all__ = [
    "TEST_ID_OFFSET",
    "Identity",
    "IndexedDataset",
    "InputBatches",
    "Normalize",
    "Scale",
    "Transform",
    "as_id_array",
    "as_subject_array",
    "as_transform",
    "available_datasets",
    "class_forget_ids",
    "download_mnist",
    "load_dataset",
    "load_npz",
    "random_forget_ids",
    "read_idx",
    "transform_from_dict",
]
