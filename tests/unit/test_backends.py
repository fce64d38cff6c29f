"""The backend registry and the zoo's namespace dispatch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specgrad.backends import DEVICES, backend
from specgrad.errors import UsageError
from specgrad.zoo._xp import namespace
from tests.conftest import REPO


def test_numpy_backend_round_trip_copies() -> None:
    cpu = backend("cpu")
    host = np.arange(4.0)
    device = cpu.asarray(host)
    device[0] = 9.0
    assert host[0] == 0.0 and cpu.xp is np and cpu.name == "numpy"
    assert cpu.to_host(device) is device or np.array_equal(cpu.to_host(device), device)
    assert cpu.is_array(device) and not cpu.is_array([1.0])


def test_unknown_device_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown device 'tpu' \\(known: cpu, gpu, sim, both\\)"):
        backend("tpu")
    assert list(DEVICES) == ["cpu", "gpu", "sim"]


def test_zoo_namespace_is_numpy_for_numpy_and_never_imports_cupy() -> None:
    assert namespace(np.ones(2), 3.0) is np
    assert namespace() is np
    assert "cupy" not in sys.modules


def test_importing_specgrad_imports_no_numerics_or_cupy() -> None:
    import subprocess

    code = (
        "import sys, specgrad; bad = [m for m in ('cupy', 'specgrad.runner', 'jsonschema') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the device registry ------------------------------------------------------------------


def test_parse_devices_expands_both_and_keeps_order() -> None:
    from specgrad.backends import parse_devices

    assert parse_devices("both") == ("cpu", "gpu")
    assert parse_devices("sim, cpu,sim") == ("sim", "cpu")
    assert parse_devices(["gpu", "both"]) == ("gpu", "cpu")
    with pytest.raises(UsageError, match="unknown device 'cuda'"):
        parse_devices("cpu,cuda")
    with pytest.raises(UsageError, match="no device given"):
        parse_devices("")


def _fake_cupy(root: Path, body: str) -> Path:
    """A package named cupy (on a path of its own) whose device answers as `body` says."""
    (root / "cupy").mkdir(parents=True)
    (root / "cupy" / "__init__.py").write_text(body)
    return root


def _device_error(path: Path | None) -> str:
    code = (
        "import sys\n"
        "from specgrad.backends import backend\n"
        "try:\n    backend('gpu')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (path, REPO) if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_gpu_without_cupy_says_how_to_install_it(tmp_path: Path) -> None:
    from specgrad.backends import backend

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed here")
    with pytest.raises(UsageError) as info:
        backend("gpu")
    text = str(info.value)
    assert type(info.value).__name__ == "DeviceUnavailable"
    assert "needs cupy" in text and "pip install 'specgrad[gpu]'" in text and "existing cupy" in text


def test_gpu_with_cupy_but_no_device_names_cupys_error(tmp_path: Path) -> None:
    body = (
        "__version__ = '99.0'\n"
        "class CUDARuntimeError(RuntimeError): pass\n"
        "class _Runtime:\n"
        "    @staticmethod\n"
        "    def getDeviceCount():\n"
        "        raise CUDARuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')\n"
        "class cuda:\n    runtime = _Runtime\n"
    )
    text = _device_error(_fake_cupy(tmp_path, body))
    assert text.startswith("DeviceUnavailable the gpu device: cupy 99.0 is installed but no CUDA device")
    assert "CUDARuntimeError: cudaErrorNoDevice" in text


def test_a_cupy_that_fails_to_import_is_unavailable_with_its_error(tmp_path: Path) -> None:
    body = "raise OSError('libcudart.so.12: cannot open shared object file')\n"
    text = _device_error(_fake_cupy(tmp_path, body))
    assert text == (
        "DeviceUnavailable the gpu device needs cupy, which failed to import: "
        "OSError: libcudart.so.12: cannot open shared object file"
    )


def test_gpu_with_zero_devices_is_unavailable_too(tmp_path: Path) -> None:
    body = "__version__ = '1'\nclass cuda:\n    class runtime:\n        getDeviceCount = staticmethod(lambda: 0)\n"
    assert "the CUDA runtime reports no device" in _device_error(_fake_cupy(tmp_path, body))


def test_a_device_that_cannot_be_used_is_reported_by_unavailable() -> None:
    from specgrad.backends import unavailable

    assert unavailable("cpu") == "" and unavailable("sim") == ""
    assert "unknown device" in unavailable("tpu")


def test_simulated_backend_round_trip() -> None:
    from specgrad.simulated import SimArray

    sim = backend("sim")
    host = np.arange(6.0).reshape(2, 3)
    device = sim.asarray(host)
    assert isinstance(device, SimArray) and sim.is_array(device) and not sim.is_array(host)
    device[0, 0] = 7.0
    assert host[0, 0] == 0.0  # a copy, never a view of host memory
    back = sim.to_host(device)
    assert isinstance(back, np.ndarray) and back[0, 0] == 7.0
    assert namespace(device) is sim.xp
    assert sim.hint(TypeError("Implicit conversion to a NumPy array is not allowed")).startswith(
        "the layer converts the sim device's arrays to numpy"
    )
