"""The framework adapters: registry, DLPack crossing, dtype maps, autodiff; skipped with
the reason where a framework is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specgrad import frameworks
from specgrad.frameworks import Adapter, Unavailable
from tests.conftest import REPO


def test_builtin_registry_and_unknown_names() -> None:
    assert frameworks.names()[:4] == ["numpy", "cupy", "torch", "jax"]
    assert frameworks.known("torch") and not frameworks.known("pytorch")
    text = frameworks.unknown_message("troch")
    assert "did you mean 'torch'" in text and "specgrad.frameworks" in text
    with pytest.raises(Unavailable, match="unknown framework 'nope'"):
        frameworks.adapter("nope")


def test_numpy_adapter_is_the_identity() -> None:
    a = frameworks.adapter("numpy")
    x = np.arange(6.0).reshape(2, 3)
    assert a.from_engine(x) is x and a.to_engine(x, np) is x
    assert a.dtype("float16") == np.float16 and a.dtype_name(x) == "float64"
    assert a.is_native(np.float64(1.0)) and not a.is_native(1.0)


def test_import_lint_and_numpy_checks_import_no_framework(tmp_path: Path) -> None:
    code = (
        "import sys, specgrad\n"
        "from specgrad.cli import main\n"
        f"main(['lint', {str(REPO / 'specs' / 'frameworks')!r}])\n"
        f"main(['validate', {str(REPO / 'specs' / 'relu.yaml')!r}, '-j', '1', '-q'])\n"
        "print([m for m in ('torch', 'jax', 'cupy') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_framework_is_unavailable_with_the_reason() -> None:
    class Missing(Adapter):
        name = "missing"
        module = "specgrad_no_such_module"
        install = "pip install it"

    with pytest.raises(Unavailable, match=r"missing is not installed .*pip install it"):
        Missing().load()
    assert Missing().installed() is None


def test_cupy_without_a_device_is_unavailable() -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(Unavailable, match="cupy is not installed"):
            frameworks.adapter("cupy").load()
        return
    pytest.skip("cupy is installed: its adapter is tested on a GPU (issue 6)")


try:
    import torch
except ImportError:  # the torch tests below skip, with the reason
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed: pip install torch==2.13.0")


@needs_torch
def test_torch_crosses_by_dlpack_without_copies() -> None:
    a = frameworks.adapter("torch")
    x = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    t = a.from_engine(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    x[0, 0] = 99.0  # the same memory: a torch layer writing its input is seen by the engine
    assert float(t[0, 0]) == 99.0
    back = a.to_engine(t * 2, np)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32 and back[0, 0] == 198.0
    view = a.from_engine(x[:, ::2])  # strided: still a view
    assert view.shape == (3, 2) and float(view[0, 0]) == 99.0
    leaf = t.detach().requires_grad_(True)
    assert a.to_engine(leaf * 1, np).shape == (3, 4)  # a tensor that requires grad comes back too


@needs_torch
@pytest.mark.parametrize("name", ["float16", "float32", "float64", "int32", "int64", "bool"])
def test_torch_dtypes_map_both_ways(name: str) -> None:
    a = frameworks.adapter("torch")
    assert a.dtype(name) == getattr(torch, name)
    t = a.from_engine(np.zeros(3, dtype=name))
    assert t.dtype == a.dtype(name) and a.dtype_name(t) == name
    assert a.to_engine(t, np).dtype == np.dtype(name)


@needs_torch
def test_torch_vjp_and_jvp_of_a_custom_function() -> None:
    a = frameworks.adapter("torch")

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(x)
            ctx.save_for_forward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (x,) = ctx.saved_tensors
            return 3 * g * x  # the rule under test, deliberately not 2 g x

        @staticmethod
        def jvp(ctx, dx):  # type: ignore[no-untyped-def]
            (x,) = ctx.saved_tensors
            return 5 * x * dx

    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    _out, pull = a.vjp(lambda x: Square.apply(x), [x], [0], {})
    (g,) = pull([torch.ones(2, dtype=torch.float64)])
    assert torch.equal(g, torch.tensor([3.0, 6.0], dtype=torch.float64))
    (g2,) = pull([torch.ones(2, dtype=torch.float64)])  # pulled back twice (backward_deterministic)
    assert torch.equal(g, g2)
    _, tangents = a.jvp(lambda x: Square.apply(x), [x], {0: torch.ones(2, dtype=torch.float64)}, {})
    assert torch.equal(tangents[0], torch.tensor([5.0, 10.0], dtype=torch.float64))


@needs_torch
def test_torch_vjp_of_an_unused_input_is_zero() -> None:
    a = frameworks.adapter("torch")
    x, y = torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    _, pull = a.vjp(lambda x, y: x * 2, [x, y], [0, 1], {})
    gx, gy = pull([torch.ones(2, dtype=torch.float64)])
    assert torch.equal(gy, torch.zeros(3, dtype=torch.float64)) and torch.equal(
        gx, 2 * torch.ones(2, dtype=torch.float64)
    )


def test_jax_crosses_by_dlpack_in_float64() -> None:
    pytest.importorskip("jax", reason="jax is not installed: pip install jax")
    import jax
    import jax.numpy as jnp

    a = frameworks.adapter("jax")
    x = np.arange(4.0)
    j = a.from_engine(x)
    assert isinstance(j, jax.Array) and j.dtype == jnp.float64  # x64 on: the oracle stays float64
    back = a.to_engine(j * 2, np)
    assert back.dtype == np.float64 and back.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert (
        a.dtype("float16") == jnp.float16 and a.dtype_name(a.from_engine(np.ones(2, np.float16))) == "float16"
    )
    _out, pull = a.vjp(lambda x, n: x * n.sum(), [j, jnp.arange(3)], [0], {})
    (g,) = pull([jnp.ones(4)])
    assert g.tolist() == [3.0] * 4
    _, tangents = a.jvp(lambda x: jnp.sin(x), [j], {0: jnp.ones(4)}, {})
    assert np.allclose(np.asarray(tangents[0]), np.cos(x))


def test_entry_point_adapter_is_found_and_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third party registers a framework in `specgrad.frameworks`; nothing imports it
    until it is used."""
    (tmp_path / "myfw.py").write_text(
        "import numpy as np\n"
        "from specgrad.frameworks import NumpyAdapter\n"
        "class ListAdapter(NumpyAdapter):\n"
        "    name = 'lists'\n"
        "    module = 'json'\n"
    )
    dist = tmp_path / "myfw-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myfw\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[specgrad.frameworks]\nlists = myfw:ListAdapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    frameworks._entry_points.cache_clear()
    try:
        assert frameworks.known("lists") and "lists" in frameworks.names()
        assert "myfw" not in sys.modules
        assert frameworks.adapter("lists").name == "lists"
    finally:
        frameworks._entry_points.cache_clear()
        frameworks._ADAPTERS.pop("lists", None)


def test_a_framework_found_unusable_stays_unavailable() -> None:
    """cupy without a device: configure refuses it, and every later load does too."""

    class NoDevice(Adapter):
        name = "nodevice"
        module = "json"

        def configure(self, module: object) -> None:
            raise Unavailable("no device")

    adapter = NoDevice()
    for _ in range(2):
        with pytest.raises(Unavailable, match="no device"):
            adapter.load()
