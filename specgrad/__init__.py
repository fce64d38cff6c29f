"""specgrad: declarative gradient checks for hand-written layer backward passes.

Pipeline: load (YAML + locations) -> validate (JSON Schema + semantics) -> model (frozen
dataclasses) -> compile (checks) -> run (numerics on an array namespace) -> report.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compile_spec", "parse_spec", "run_spec"]


def __getattr__(name: str) -> object:
    # lazy, so `import specgrad` stays cheap and imports no numerics until asked
    if name == "parse_spec":
        from specgrad.validate import parse_spec

        return parse_spec
    if name == "compile_spec":
        from specgrad.compile import compile_spec

        return compile_spec
    if name == "run_spec":
        from specgrad.runner import run_spec

        return run_spec
    raise AttributeError(f"module 'specgrad' has no attribute {name!r}")
