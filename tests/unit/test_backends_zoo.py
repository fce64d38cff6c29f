"""The backend registry and the zoo's namespace dispatch."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from specgrad.backends import BACKENDS, get_backend
from specgrad.errors import UsageError
from specgrad.zoo._xp import namespace


def test_numpy_backend_round_trip_copies() -> None:
    backend = get_backend("numpy")
    host = np.arange(4.0)
    device = backend.asarray(host)
    device[0] = 9.0
    assert host[0] == 0.0 and backend.xp is np
    assert backend.to_host(device) is device or np.array_equal(backend.to_host(device), device)
    assert backend.is_array(device) and not backend.is_array([1.0])


def test_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown backend 'tpu' \\(available: numpy\\)"):
        get_backend("tpu")
    assert list(BACKENDS) == ["numpy"]


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
