"""Devices through the engine: plans and ids per device, a spec's `device:`, the CPU/GPU
agreement check (run on the simulated device: the same interfaces a GPU goes through)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from specgrad.backends import unavailable
from specgrad.compile import compile_spec
from specgrad.results import CheckResult, Status
from specgrad.runner import run_spec
from specgrad.validate import parse_spec

#: tanh whose "device kernel" (any namespace but numpy) computes tanh(k x): consistent with
#: its backward, so its own checks pass on every device; only the comparison finds it
DEVICE_BUG = """
import numpy as np
from specgrad.zoo._xp import namespace
K_DEVICE = {k}
K_BACKWARD = {kb}
def _k(x, device_k):
    return 1.0 if namespace(x) is np else device_k
def forward(x):
    xp = namespace(x)
    return xp.tanh(_k(x, K_DEVICE) * x)
def backward(g, x):
    xp = namespace(x)
    k = _k(x, K_DEVICE)
    t = xp.tanh(k * x)
    return g * k * (1 - t * t) * _k(x, K_BACKWARD)
"""


def spec_file(tmp_path: Path, source: str, **doc: Any) -> Path:
    module = f"device_mod_{abs(hash(source)) % 10**9}"
    (tmp_path / f"{module}.py").write_text(source)
    sys.modules.pop(module, None)
    body = {
        "specgrad": 1,
        "name": "t",
        "description": "d",
        "forward": f"{module}:forward",
        "backward": f"{module}:backward",
        "inputs": {"x": {"shape": [3, 4]}},
        "dtypes": ["float32", "float64"],
        "cases": ["random"],
        **doc,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run(path: Path, devices: list[str] | None) -> dict[str, CheckResult]:
    spec = parse_spec(path)
    return {r.check_id: r for r in run_spec(spec, compile_spec(spec, devices=devices))}


def test_ids_name_the_device_except_the_cpu(tmp_path: Path) -> None:
    spec = parse_spec(spec_file(tmp_path, DEVICE_BUG.format(k=1.0, kb=1.0)))
    ids = [
        p.check_id(t)
        for p in compile_spec(spec, devices=["cpu", "sim"], dtypes=["float64"])
        for t in p.targets
    ]
    assert "t[float64,random]::x" in ids and "t[float64,random,sim]::x" in ids
    assert "t[float64,random]::device.sim" in ids
    assert len([i for i in ids if ",sim]" in i]) == len(
        [i for i in ids if i.startswith("t[float64,random]::") and "device." not in i]
    )
    only_cpu = [p.check_id(t) for p in compile_spec(spec) for t in p.targets]
    assert all(",sim" not in i and "device." not in i for i in only_cpu)


def test_spec_device_is_the_default_and_the_command_line_replaces_it(tmp_path: Path) -> None:
    spec = parse_spec(spec_file(tmp_path, DEVICE_BUG.format(k=1.0, kb=1.0), device="both"))
    assert spec.devices == ("cpu", "gpu")
    plans = compile_spec(spec, dtypes=["float64"])
    assert {p.device for p in plans} == {"cpu", "gpu"}
    assert [p.targets for p in plans if p.kind == "devices"] == [("device.gpu",)]
    plans = compile_spec(spec, dtypes=["float64"], devices=["sim"])
    assert {p.device for p in plans} == {"sim"} and all(p.kind == "checks" for p in plans)


def test_correct_layer_agrees_across_devices(tmp_path: Path) -> None:
    r = run(spec_file(tmp_path, DEVICE_BUG.format(k=1.0, kb=1.0)), ["cpu", "sim"])
    assert {v.status for v in r.values()} == {Status.PASS}
    agree = r["t[float32,random]::device.sim"]
    assert agree.kind == "agreement" and agree.device == "cpu" and agree.comparison is not None
    assert r["t[float32,random,sim]::x"].device == "sim"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_device_kernel_that_is_self_consistent_but_wrong_fails_only_the_comparison(
    tmp_path: Path, dtype: str
) -> None:
    r = run(spec_file(tmp_path, DEVICE_BUG.format(k=1.0005, kb=1.0)), ["cpu", "sim"])
    mine = {i: v for i, v in r.items() if i.startswith(f"t[{dtype},")}
    bad = {i for i, v in mine.items() if v.status is not Status.PASS}
    assert bad == {f"t[{dtype},random]::device.sim"}
    text = mine[f"t[{dtype},random]::device.sim"].message
    assert text.startswith("on sim, t disagrees with itself on cpu (the reference) on identical inputs:")
    # in a float32 check, the float64 runs on the same values disagree already
    assert "output 0: differs" in text and "gradient of x: differs" in text


def test_a_backward_wrong_on_the_device_fails_there_and_in_the_comparison(tmp_path: Path) -> None:
    r = run(spec_file(tmp_path, DEVICE_BUG.format(k=1.0, kb=1.01)), ["cpu", "sim"])
    assert r["t[float64,random]::x"].status is Status.PASS
    assert r["t[float64,random,sim]::x"].status is Status.FAIL
    text = r["t[float64,random]::device.sim"].message
    assert "gradient of x: differs" in text and "output 0" not in text


def test_a_layer_that_is_not_namespace_generic_errors_with_a_hint(tmp_path: Path) -> None:
    source = (
        "import numpy as np\n"
        "def forward(x):\n    return np.tanh(np.asarray(x))\n"
        "def backward(g, x):\n    return g * (1 - np.tanh(x) ** 2)\n"
    )
    r = run(spec_file(tmp_path, source), ["sim"])
    forward = r["t[float64,random,sim]::contract.forward_output"]
    assert forward.status is Status.ERROR
    assert "Implicit conversion to a NumPy array" in forward.message
    assert "not array-namespace generic" in forward.message and "device: cpu" in forward.message
    # the same spec, declared cpu-only: its sim checks are skipped with the reason
    r = run(spec_file(tmp_path, source, device="cpu"), ["cpu", "sim"])
    skipped = {i: v for i, v in r.items() if v.status is Status.SKIP}
    assert skipped and all(",sim]" in i or "device.sim" in i for i in skipped)
    assert "device sim not used: t runs on cpu only" in r["t[float64,random,sim]::x"].message
    assert "does not run on sim (device: cpu)" in r["t[float64,random]::device.sim"].message
    assert all(v.status is Status.PASS for i, v in r.items() if i not in skipped)


@pytest.mark.skipif(not unavailable("gpu"), reason="a GPU is usable here")
def test_a_spec_that_asks_for_the_gpu_skips_where_there_is_none(tmp_path: Path) -> None:
    r = run(spec_file(tmp_path, DEVICE_BUG.format(k=1.0, kb=1.0), device="both"), None)
    gpu = [v for i, v in r.items() if ",gpu]" in i or "device.gpu" in i]
    assert gpu and all(v.status is Status.SKIP and "device gpu unavailable" in v.message for v in gpu)
    assert all(v.status is Status.PASS for v in r.values() if v not in gpu)


def test_implementations_agree_on_each_device(tmp_path: Path) -> None:
    source = DEVICE_BUG.format(k=1.0, kb=1.0)
    module = f"device_mod_{abs(hash(source)) % 10**9}"
    path = spec_file(
        tmp_path,
        source,
        implementations={
            "a": {"forward": f"{module}:forward", "backward": f"{module}:backward"},
            "b": {"forward": f"{module}:forward", "backward": f"{module}:backward"},
        },
        forward=None,
        backward=None,
    )
    text = path.read_text().replace("forward: null\n", "").replace("backward: null\n", "")
    path.write_text(text)
    r = run(path, ["cpu", "sim"])
    assert r["t[float64,random]::agree.b"].status is Status.PASS
    assert r["t[float64,random,sim]::agree.b"].status is Status.PASS
    assert r["t@a[float64,random]::device.sim"].status is Status.PASS
    assert r["t@b[float64,random]::device.sim"].status is Status.PASS


def test_a_colored_check_reads_back_per_group_not_per_element(tmp_path: Path) -> None:
    """On a GPU every read-back waits for the device: a full check of a conv input must
    read back a few figures per group of elements, never per element."""
    from specgrad import simulated

    path = tmp_path / "conv.yaml"
    path.write_text(
        "specgrad: 1\nname: conv\ndescription: d\n"
        "forward: specgrad.zoo.conv:forward\nbackward: specgrad.zoo.conv:backward\n"
        "inputs:\n  x: {shape: [4, 8, 16, 16]}\nparameters:\n  w: {shape: [8, 8, 3, 3]}\n"
        "  b: {shape: [8]}\nattrs: {stride: 1, padding: 1}\n"
        "dtypes: [float64]\ncases: [random]\n"
    )
    spec = parse_spec(path)
    simulated.TRANSFERS.clear()
    results = {r.target: r for r in run_spec(spec, compile_spec(spec, devices=["sim"]))}
    assert {r.status for r in results.values()} <= {Status.PASS, Status.SKIP}
    assert results["x"].method.startswith("colored") and results["w"].method.startswith("colored")
    elements = 4 * 8 * 16 * 16 + 8 * 8 * 9 + 8
    # 832 here; element by element (--mode per-element) it is 61,635
    assert simulated.TRANSFERS["to_host"] < elements / 4, simulated.TRANSFERS
