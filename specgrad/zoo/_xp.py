"""The array namespace of the arguments: cupy for cupy arrays, the namespace an array
names itself (`__array_namespace__`, e.g. the simulated device's) for other non-numpy
arrays, else numpy (no cupy import unless a cupy array is actually passed)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy


def namespace(*arrays: Any) -> ModuleType:
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
        if not isinstance(a, (numpy.ndarray, numpy.generic)) and hasattr(a, "__array_namespace__"):
            space: ModuleType = a.__array_namespace__()
            return space
    return numpy
