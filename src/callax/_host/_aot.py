"""Ahead-of-time compiled programs (``jax.jit(f).lower(...).compile()``) with callax's host
calls: every call runs through JAX's Python dispatch, which passes the ordered effect's
token.

JAX's ``Compiled`` object builds a C++ fast path after its first call unless the program
has *unordered* effects or host callbacks registered with JAX; it does not check for
ordered effects, whose token is an extra argument that the fast path does not pass. With
``io_callback(ordered=True)`` the program also has a host callback, so it never gets the
fast path; callax's FFI host call registers none (that is what lets JAX's persistent cache
store the program), so the second call of a compiled program failed with "Execution
supplied 2 arguments but compiled program expected 3". ``jax.jit``'s own dispatch refuses
the fast path for ordered effects; :func:`no_fast_path_with` makes ``Compiled`` do the same
for programs holding callax's effect (the token then orders the calls of every execution
with those of other programs, as under ``jax.jit``).
"""

from __future__ import annotations

__all__ = ["no_fast_path_with"]


def no_fast_path_with(effect_type: type) -> None:
    """Compiled programs whose ordered effects include ``effect_type`` get no C++ fast path
    (JAX's dispatch with tokens instead); other programs are unchanged."""
    from jax._src.interpreters import pxla

    jax_create = pxla.MeshExecutable.create_cpp_call
    if getattr(jax_create, "_callax", False):  # already wrapped (a reload)
        return

    def create_cpp_call(self, params):
        ordered = getattr(self.unsafe_call, "ordered_effects", None) or ()
        if any(isinstance(e, effect_type) for e in ordered):
            return None  # Compiled.__call__ then uses Compiled.call (tokens threaded)
        return jax_create(self, params)

    create_cpp_call._callax = True  # type: ignore[attr-defined]
    pxla.MeshExecutable.create_cpp_call = create_cpp_call
