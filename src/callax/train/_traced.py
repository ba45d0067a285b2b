"""Traced hyperparameters of a trainer: the copy of a ``PPO``/``SAC`` whose sweepable
hyperparameters are arrays of the running program (one per ``vmap`` element of a sweep).

The trainers keep their hyperparameters as static fields (checked when built, part of the
compiled program). A sweep needs some of them to be data instead: ``learn(...,
hparams={"learning_rate": lr})`` builds, inside the traced function, a copy of the trainer
with those fields set to the traced values. The copy lives only inside that trace (it is
never flattened, hashed or checked), and every use of a sweepable field is arithmetic that
accepts an array (``optax.inject_hyperparams`` takes a traced learning rate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import jax.numpy as jnp
from jaxtyping import ArrayLike

__all__ = ["check_hparams", "with_traced"]

T = TypeVar("T")


def check_hparams(algo: Any, hparams: Mapping[str, Any] | None) -> None:
    """Fail now, naming the sweepable fields, if `hparams` names another."""
    if hparams is None:
        return
    allowed = type(algo).SWEEPABLE
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"{type(algo).__name__} cannot sweep {unknown}: its traced "
                         f"hyperparameters are {list(allowed)}")


def with_traced(algo: T, hparams: Mapping[str, ArrayLike] | None) -> T:
    """`algo` with the fields of `hparams` set to their (traced) ``float32`` values."""
    if not hparams:
        return algo
    check_hparams(algo, hparams)
    copy = object.__new__(type(algo))
    copy.__dict__.update(algo.__dict__)  # the frozen module's fields, without __init__
    for name, value in hparams.items():
        copy.__dict__[name] = jnp.asarray(value, jnp.float32)
    return copy
