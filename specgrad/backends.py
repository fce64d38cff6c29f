"""Array backends: where the layer's arrays live and which namespace (`xp`) does the math.

Inputs are always made on the host and moved with `asarray`, so every backend sees the
same values; results come back with `to_host` for comparison in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from specgrad.errors import UsageError


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def xp(self) -> ModuleType: ...

    def asarray(self, host: np.ndarray) -> Any: ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def is_array(self, value: object) -> bool: ...


@dataclass(frozen=True)
class NumpyBackend:
    name: str = "numpy"

    @property
    def xp(self) -> ModuleType:
        return np

    def asarray(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def is_array(self, value: object) -> bool:
        """An array of this backend with a numeric dtype (a numpy scalar counts: reductions
        return them)."""
        return isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biufc"


BACKENDS: dict[str, Backend] = {"numpy": NumpyBackend()}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r} (available: {', '.join(BACKENDS)})") from None
