"""Devices and their array backends: where the layer's arrays live and which namespace
(`xp`) does the math there.

The registry maps a device name to a backend: `cpu` -> numpy, `gpu` -> cupy (imported
only when a GPU is asked for), `sim` -> a numpy-backed stand-in that follows cupy's rules
(`specgrad.simulated`), so GPU readiness is checked on a CPU. Inputs are always made on
the host and moved with `asarray`, so every device sees bit-identical values; the
numerics run on the device in `xp`; `to_host` brings back what is compared across devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from specgrad.errors import UsageError

#: the device every check runs on unless a spec or the command line says otherwise
DEFAULT_DEVICE = "cpu"

#: `--device both` / `device: both`
BOTH = ("cpu", "gpu")


class DeviceUnavailable(UsageError):
    """The device was asked for but cannot be used here (no cupy, no CUDA device)."""


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def xp(self) -> ModuleType: ...

    def asarray(self, host: np.ndarray) -> Any: ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def is_array(self, value: object) -> bool: ...

    def synchronize(self) -> None: ...

    def hint(self, exc: BaseException) -> str: ...

    def describe(self) -> str: ...


def _numeric(dtype: Any) -> bool:
    return getattr(dtype, "kind", "") in ("b", "i", "u", "f", "c")


@dataclass(frozen=True)
class NumpyBackend:
    name: str = "numpy"
    device: str = "cpu"

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
        return isinstance(value, (np.ndarray, np.generic)) and _numeric(value.dtype)

    def synchronize(self) -> None:
        return None

    def hint(self, exc: BaseException) -> str:
        return ""

    def describe(self) -> str:
        return f"numpy {np.__version__}"


_NOT_GENERIC = (
    "the layer {what}: it is not array-namespace generic. Take the namespace from the inputs "
    "(specgrad.zoo._xp.namespace(x) gives numpy, cupy or the simulated device's; "
    "cupy.get_array_module(x) numpy or cupy) and make constants with it, or give the spec "
    "`device: cpu` so it is checked on the CPU only"
)


def _generic_hint(exc: BaseException, device: str, mixed: str) -> str:
    """The hint for a layer that is not namespace generic, from the device library's error
    (`mixed`: how it says that host and device arrays were mixed)."""
    text = str(exc)
    if "Implicit conversion to a NumPy array" in text:
        what = f"converts the {device} device's arrays to numpy"
    elif mixed in text:
        what = f"mixes host numpy arrays (a constant made with numpy?) with the {device} device's arrays"
    else:
        return ""
    return _NOT_GENERIC.format(what=what)


@dataclass(frozen=True)
class CupyBackend:
    """cupy on the current CUDA device."""

    module: ModuleType
    name: str = "cupy"
    device: str = "gpu"

    @property
    def xp(self) -> ModuleType:
        return self.module

    def asarray(self, host: np.ndarray) -> Any:
        return self.module.array(host, copy=True)

    def to_host(self, array: Any) -> np.ndarray:
        return self.module.asnumpy(array)

    def is_array(self, value: object) -> bool:
        return isinstance(value, self.module.ndarray) and _numeric(value.dtype)

    def synchronize(self) -> None:
        self.module.cuda.get_current_stream().synchronize()

    def hint(self, exc: BaseException) -> str:
        return _generic_hint(exc, self.device, "Unsupported type <class 'numpy.ndarray'>")

    def describe(self) -> str:
        cuda = self.module.cuda
        name = cuda.runtime.getDeviceProperties(cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return f"{name}, cupy {self.module.__version__}, CUDA runtime {cuda.runtime.runtimeGetVersion()}"


@dataclass(frozen=True)
class SimulatedBackend:
    """numpy arithmetic under cupy's rules (specgrad.simulated)."""

    name: str = "simulated"
    device: str = "sim"

    @property
    def xp(self) -> ModuleType:
        from specgrad.simulated import xp

        return xp

    def asarray(self, host: np.ndarray) -> Any:
        return self.xp.array(host, copy=True)

    def to_host(self, array: Any) -> np.ndarray:
        return self.xp.asnumpy(array)

    def is_array(self, value: object) -> bool:
        from specgrad.simulated import SimArray

        return isinstance(value, SimArray) and _numeric(value.dtype)

    def synchronize(self) -> None:
        return None

    def hint(self, exc: BaseException) -> str:
        return _generic_hint(exc, self.device, "cannot be mixed with device arrays")

    def describe(self) -> str:
        return f"simulated: numpy {np.__version__} under cupy's rules"


def _cupy() -> Backend:
    """cupy, if it imports and a CUDA device answers a first allocation."""
    try:
        import cupy
    except ImportError as exc:
        raise DeviceUnavailable(
            f"the gpu device needs cupy, which is not importable ({exc}): install it with "
            "pip install 'specgrad[gpu]' (cupy-cuda12x, for CUDA 12), or use an existing cupy "
            "install (cupy-cuda11x, cupy-cuda13x, a conda cupy) in the same environment"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a broken install: a missing CUDA library, an old cupy
        raise DeviceUnavailable(
            f"the gpu device needs cupy, which failed to import: {type(exc).__name__}: {exc}"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise RuntimeError("the CUDA runtime reports no device")
        cupy.zeros(1).sum().get()  # a driver too old for cupy's CUDA fails here, not above
    except Exception as exc:  # noqa: BLE001 - cupy raises its own CUDA error types
        raise DeviceUnavailable(
            f"the gpu device: cupy {cupy.__version__} is installed but no CUDA device is usable: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return CupyBackend(cupy)


#: device name -> what makes its backend (called once, on first use)
DEVICES: dict[str, Callable[[], Backend]] = {
    "cpu": NumpyBackend,
    "gpu": _cupy,
    "sim": SimulatedBackend,
}


def backend(device: str) -> Backend:
    """The device's backend; DeviceUnavailable (exit 2 from the CLI) if it cannot be used."""
    made = _made(device)
    if isinstance(made, UsageError):
        raise made
    return made


def unavailable(device: str) -> str:
    """Why the device cannot be used here ("" where it can)."""
    made = _made(device)
    return str(made) if isinstance(made, UsageError) else ""


@cache
def _made(device: str) -> Backend | UsageError:
    """The backend, or why there is none: probed once per process (a CUDA probe is slow)."""
    try:
        make = DEVICES[device]
    except KeyError:
        return UsageError(f"unknown device {device!r} (known: {', '.join(DEVICES)}, both)")
    try:
        return make()
    except UsageError as exc:
        return exc


def parse_devices(text: str | Sequence[str]) -> tuple[str, ...]:
    """'cpu', 'gpu', 'both' (cpu and gpu) or a comma list, in order, each once."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for part in (p.strip() for p in parts if p.strip()):
        for device in BOTH if part == "both" else (part,):
            if device not in DEVICES:
                raise UsageError(f"unknown device {device!r} (known: {', '.join(DEVICES)}, both)")
            if device not in out:
                out.append(device)
    if not out:
        raise UsageError("no device given (known: " + ", ".join(DEVICES) + ", both)")
    return tuple(out)
