"""The user's training recipe, kept exact: schedules, keyed augmentation, devices, precision.

Every piece is a function of (seed, sub-model, block, epoch, step-in-block, sample id) and of
the recipe's parameters, which is what keeps ``fit(D).forget(F)`` bit for bit
``fit(D.drop(F))`` (docs/guarantees.md, "Training recipes"; docs/recipes.md for usage).
"""

from expunge.recipe._augment import (
    AUGMENTATIONS,
    Augmentation,
    check_augmentation_input,
    crop_padding,
    random_crop,
    random_flip,
    resolve_augmentation,
    sample_keys,
)
from expunge.recipe._devices import (
    DEVICES,
    PRECISIONS,
    autocast_dtype,
    deterministic,
    platform,
    resolve_device,
)
from expunge.recipe._schedules import SCHEDULES, Schedule, lr_multiplier, progress, resolve_schedule
from expunge.recipe._step import RecipeStep

__all__ = [
    "AUGMENTATIONS",
    "DEVICES",
    "PRECISIONS",
    "SCHEDULES",
    "Augmentation",
    "RecipeStep",
    "Schedule",
    "autocast_dtype",
    "check_augmentation_input",
    "crop_padding",
    "deterministic",
    "lr_multiplier",
    "platform",
    "progress",
    "random_crop",
    "random_flip",
    "resolve_augmentation",
    "resolve_device",
    "resolve_schedule",
    "sample_keys",
]
