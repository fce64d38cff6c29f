"""On a GPU: the zoo passes on cupy, CPU and GPU agree, a wrong kernel is caught.

Skipped, with the reason, where cupy or a CUDA device is missing (CI). With
SPECGRAD_GPU_TEST_DEVICE=sim the same tests run on the simulated device (what
benchmarks/gpu_check.sh does in its dry run on a CPU).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from specgrad.backends import backend, unavailable
from specgrad.compile import compile_spec
from specgrad.numerics.inputs import make_inputs
from specgrad.results import Status
from specgrad.runner import run_spec
from specgrad.validate import parse_spec
from tests.conftest import SPECS, CliResult
from tests.unit.test_devices import DEVICE_BUG, run, spec_file

DEVICE = os.environ.get("SPECGRAD_GPU_TEST_DEVICE", "gpu")
with warnings.catch_warnings():  # cupy, torch and jax may warn about their CUDA setup: shown, not raised
    warnings.simplefilter("default")
    WHY = unavailable(DEVICE)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(WHY), reason=WHY or ""),
    pytest.mark.filterwarnings("default"),
]

WORKERS = str(min(8, os.cpu_count() or 1))


def test_inputs_reach_the_device_bit_for_bit() -> None:
    device = backend(DEVICE)
    spec = parse_spec(SPECS / "conv2d.yaml")
    for dtype in ("float16", "float32", "float64"):
        host = make_inputs(spec, spec.cases[0], dtype, spec.seed)
        for name, array in host.items():
            there = device.asarray(array)
            assert device.is_array(there) and str(there.dtype) == str(array.dtype)
            np.testing.assert_array_equal(device.to_host(there), array, strict=True, err_msg=name)


def test_a_self_consistent_but_wrong_kernel_is_caught(tmp_path: Path) -> None:
    r = run(spec_file(tmp_path, DEVICE_BUG.format(k=1.0005, kb=1.0)), ["cpu", DEVICE])
    bad = {i for i, v in r.items() if v.status is not Status.PASS}
    assert bad == {f"t[float32,random]::device.{DEVICE}", f"t[float64,random]::device.{DEVICE}"}


@pytest.mark.skipif(DEVICE != "gpu", reason="a cupy kernel needs the GPU itself")
def test_a_cupy_elementwise_kernel_is_checked_on_both_devices(tmp_path: Path) -> None:
    source = (
        "import cupy\n"
        "_f = cupy.ElementwiseKernel('T x', 'T y', 'y = x > 0 ? x : x * (T)0.1', 'leaky_f')\n"
        "_b = cupy.ElementwiseKernel('T g, T x', 'T d', 'd = x > 0 ? g : g * (T)0.1', 'leaky_b')\n"
        "def forward(x):\n    return _f(x)\n"
        "def backward(g, x):\n    return _b(g, x)\n"
    )
    r = run(spec_file(tmp_path, source, framework="cupy"), ["cpu", DEVICE])
    assert {v.status for v in r.values()} <= {Status.PASS, Status.SKIP}
    assert r[f"t[float64,random]::device.{DEVICE}"].status is Status.PASS


def test_a_large_conv_is_checked_in_full_on_the_device(tmp_path: Path) -> None:
    """The issue's size: every element of x [8,16,32,32] (131,072), w and b, default mode."""
    path = tmp_path / "conv.yaml"
    path.write_text(
        "specgrad: 1\nname: conv\ndescription: d\n"
        "forward: specgrad.zoo.conv:forward\nbackward: specgrad.zoo.conv:backward\n"
        "inputs:\n  x: {shape: [8, 16, 32, 32]}\n"
        "parameters:\n  w: {shape: [16, 16, 3, 3]}\n  b: {shape: [16]}\n"
        "attrs: {stride: 1, padding: 1}\ndtypes: [float64]\ncases: [random]\n"
    )
    spec = parse_spec(path)
    start = time.perf_counter()
    results = {r.target: r for r in run_spec(spec, compile_spec(spec, devices=[DEVICE]))}
    backend(DEVICE).synchronize()
    seconds = time.perf_counter() - start
    print(f"conv [8,16,32,32] full check on {DEVICE}: {seconds:.2f} s")
    assert {r.status for r in results.values()} <= {Status.PASS, Status.SKIP}
    assert results["x"].method.startswith("colored") and results["x"].comparison is not None
    assert results["x"].comparison.size == 8 * 16 * 32 * 32


# the longest last: a stage stopped at its time limit keeps the others' verdicts


def test_the_zoo_passes_on_the_device(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    report = tmp_path / "zoo.json"
    r = cli("validate", SPECS, "--device", DEVICE, "-q", "-j", WORKERS, "--json", report)
    assert r.code == 0, r.text[-4000:]
    document = json.loads(report.read_text())
    print(f"device: {document['environment']['devices'][DEVICE]}")
    checks = document["checks"]
    assert checks and {c["device"] for c in checks} == {DEVICE}
    assert {c["status"] for c in checks} <= {"PASS", "SKIP"}


def test_cpu_and_device_agree_on_the_zoo(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    report = tmp_path / "agree.json"
    r = cli(
        "validate", SPECS, "--device", f"cpu,{DEVICE}", "-k", "device", "-q", "-j", WORKERS, "--json", report
    )
    assert r.code == 0, r.text[-4000:]
    checks = json.loads(report.read_text())["checks"]
    assert len(checks) > 100 and {c["target"] for c in checks} == {f"device.{DEVICE}"}
    assert {c["status"] for c in checks} <= {"PASS", "SKIP"}
