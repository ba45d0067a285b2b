"""Hyperparameters as TensorBoard's HParams plugin takes them: a mapping, or the scalar
fields of a dataclass / Equinox module (used by ``HParamsCallback`` and eager
``add_hparams``; here so that neither imports the other's package)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

HParamValue = bool | int | float | str

__all__ = ["HParamValue", "hparams_of"]


def hparams_of(config: Any) -> dict[str, HParamValue]:
    """The hyperparameters of a configuration: a mapping as it is, or the fields of a
    dataclass / Equinox module (such as [`callax.train.PPO`][]) whose values are numbers,
    booleans or strings (tuples and lists become strings, ``None`` and arrays are left out),
    plus ``algorithm``: the class name."""
    if isinstance(config, Mapping):
        return dict(config)
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"hparams must be a mapping or a dataclass/Equinox module, got "
                        f"{config!r}")
    out: dict[str, HParamValue] = {"algorithm": type(config).__name__}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name, None)
        if isinstance(value, tuple | list):
            value = str(tuple(value))
        if isinstance(value, bool | int | float | str):
            out[field.name] = value
    return out
