"""Reference models by name, and the one way a model is built from a spec.

A *model spec* is either a registered name (``"logreg"``, ``"mlp"``, ``"lenet"``) with
keyword options, an import string ``"package.module:factory"`` naming a factory (what the
CLI's ``--model`` takes; the manifest records the string, so a reopened store finds the
factory again), or any callable returning an ``nn.Module``. A callable may accept
``input_shape`` and ``n_classes`` keywords; if it does not, it is called with no arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from expunge._hashing import derive_key
from expunge._imports import import_callable, is_import_string
from expunge.exceptions import UnknownModelError, UnsupportedModelError

ModelFactory = Callable[..., nn.Module]
ModelSpec = str | ModelFactory

_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory(input_shape, n_classes, **options)`` under ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        _MODELS[name] = factory
        return factory

    return decorator


def available_models() -> list[str]:
    """Names of the registered reference models."""
    return sorted(_MODELS)


def build_model(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    n_classes: int,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Instantiate ``spec`` for inputs of ``input_shape`` and ``n_classes`` outputs.

    Initialisation draws from torch's default generator: callers that need a
    reproducible init (every strategy does) wrap this in :func:`seeded_init`.
    """
    options = dict(options or {})
    if is_import_string(spec):
        spec = import_callable(str(spec), "model", UnknownModelError)
    if isinstance(spec, str):
        try:
            factory = _MODELS[spec]
        except KeyError:
            raise UnknownModelError(
                f"Unknown model {spec!r}. Available: {', '.join(available_models())}; "
                "or pass a callable that returns an nn.Module, or an import string "
                "'package.module:factory'."
            ) from None
        module = factory(input_shape=tuple(input_shape), n_classes=int(n_classes), **options)
    elif callable(spec):
        params = inspect.signature(spec).parameters
        takes_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs: dict[str, Any] = dict(options)
        if takes_kw or "input_shape" in params:
            kwargs["input_shape"] = tuple(input_shape)
        if takes_kw or "n_classes" in params:
            kwargs["n_classes"] = int(n_classes)
        module = spec(**kwargs)
    else:
        raise UnknownModelError(
            f"model must be a registered name or a callable returning an nn.Module; got {spec!r}."
        )
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(
            f"The model factory {spec!r} returned {type(module).__name__}, not an nn.Module."
        )
    if not any(True for _ in module.parameters()):
        raise UnsupportedModelError(f"The model built from {spec!r} has no parameters to train.")
    return module


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` with torch's default generator seeded to ``seed``, then restore it.

    Module constructors draw their initial weights from the global generator; forking it
    keeps the init a function of ``seed`` alone and leaves the caller's RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def init_seed(seed: int, submodel: int = 0) -> int:
    """The torch seed of sub-model ``submodel``'s initial weights: ``derive_key(seed, "init",
    submodel) >> 1`` (63 bits, as ``torch.manual_seed`` takes)."""
    return derive_key(int(seed), "init", int(submodel)) >> 1


def seeded_model(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    n_outputs: int,
    options: Mapping[str, Any] | None = None,
    *,
    seed: int,
    submodel: int = 0,
) -> nn.Module:
    """Sub-model ``submodel``'s freshly initialised network, a function of ``(seed, submodel)``.

    The one way every strategy builds an initial model (Retrain, SISA, ARCANE's SVDD
    network, PUMA, the approximate baselines), so that two strategies with the same
    recipe start from the same bits: PUMA's fit equals Retrain's on the same training ids.
    """
    return seeded_init(init_seed(seed, submodel),
                       lambda: build_model(spec, input_shape, n_outputs, options))
