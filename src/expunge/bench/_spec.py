"""Experiment specs: one short TOML file per experiment, shipped in ``expunge/bench/specs/``.

A spec names the dataset, the model and training recipe shared by every strategy, the
strategies (each a registered name plus its own parameters), experiment settings, and a
``[quick]`` table of overrides that turns it into a tiny run on digits for CI.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from expunge.exceptions import InvalidParameterError

_KEYS = {"name", "title", "kind", "claim", "dataset", "data_options", "train", "strategies",
         "settings", "quick", "reference"}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    """A resolved experiment: everything the runner needs, nothing implicit."""

    name: str
    title: str
    kind: str
    claim: str
    dataset: str
    train: dict[str, Any]
    strategies: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    reference: str = "retrain"
    quick: dict[str, Any] = field(default_factory=dict)

    def resolved(self, quick: bool) -> ExperimentSpec:
        """This spec, with the ``[quick]`` overrides applied when ``quick``."""
        if not quick:
            return self
        merged = _merge(self.to_dict(), self.quick)
        if merged["dataset"] != self.dataset:
            # options belong to a dataset (mnist's limit_train means nothing for digits)
            merged["data_options"] = copy.deepcopy(self.quick.get("data_options", {}))
        merged["quick"] = {}
        return ExperimentSpec(**merged)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def strategy_params(self, label: str, seed: int) -> tuple[str, dict[str, Any]]:
        """(registered name, constructor params) for strategy ``label``: recipe + own params."""
        own = dict(self.strategies[label])
        name = own.pop("strategy", label)
        params = {**self.train, **own, "seed": seed}
        return name, params


def load_spec(path: Path) -> ExperimentSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise InvalidParameterError(f"Cannot read experiment spec {str(path)!r}: {err}") from err
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise InvalidParameterError(
            f"Spec {path.name} has unknown keys {unknown}; valid keys: {sorted(_KEYS)}."
        )
    raw.setdefault("name", path.stem)
    raw.setdefault("settings", {})
    raw.setdefault("claim", "")
    return ExperimentSpec(**raw)


def spec_dir() -> Path:
    """The specs shipped with the package (package data ``expunge/bench/specs``), wherever
    it is installed: nothing depends on a checkout's layout or the working directory."""
    return Path(str(resources.files("expunge.bench").joinpath("specs")))


def available_experiments(directory: Path | None = None) -> dict[str, Path]:
    """``{name: path}`` of the specs in ``directory`` (default: the shipped ones).

    Raises:
        InvalidParameterError: ``directory`` is not a folder.
    """
    directory = Path(directory) if directory is not None else spec_dir()
    if not directory.is_dir():
        raise InvalidParameterError(
            f"The spec folder {str(directory)!r} does not exist; pass a folder of *.toml "
            f"specs, or leave it out to use the shipped ones ({spec_dir()})."
        )
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}
