"""The array namespace of the arguments: cupy for cupy arrays, else numpy (no cupy import
unless a cupy array is actually passed)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy


def namespace(*arrays: Any) -> ModuleType:
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy  # noqa: PLC0415 - only when a cupy array is present

            return cupy  # type: ignore[no-any-return]
    return numpy
