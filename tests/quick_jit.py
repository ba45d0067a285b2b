"""``quick_jit``: ``jax.jit`` whose XLA compile skips the expensive optimisation passes.

The same two settings ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` makes (XLA backend optimisation
level 0, no expensive LLVM passes), given per program through ``jax.jit``'s
``compiler_options``: they are part of that program's compile options, so unlike the
environment variable (or ``jax.config``) set in the test process they reach no other test's
program. A small PPO/SAC training compiles ~3x faster this way and runs a little slower, the
better trade for tests that check what callbacks record, not how well or how fast an agent
learns. Learning tests, timing tests and tests of the default program use ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax

QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

quick_jit = functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
