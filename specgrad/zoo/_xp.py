"""The array namespace of the arguments: cupy for cupy arrays, else numpy (no cupy import
unless a cupy array is actually passed)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy


def namespace(*arrays: Any) -> ModuleType:
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return numpy
