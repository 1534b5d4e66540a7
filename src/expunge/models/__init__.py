"""Reference models and the name -> factory registry."""

from expunge.models import _reference  # noqa: F401  (registers the reference models)
from expunge.models._fingerprint import module_fingerprint
from expunge.models._registry import (
    ModelSpec,
    available_models,
    build_model,
    init_seed,
    register_model,
    seeded_init,
    seeded_model,
)

__all__ = ["ModelSpec", "available_models", "build_model", "init_seed", "module_fingerprint",
           "register_model", "seeded_init", "seeded_model"]
