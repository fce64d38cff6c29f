"""The CLI's --device: clear exit-2 errors for devices that cannot be used, reports that
name the device, the CPU/GPU agreement check (on the simulated device), -j N alike."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from specgrad.backends import unavailable
from tests.conftest import REPO, SPECS, CliResult, run_subprocess

NO_GPU = pytest.mark.skipif(not unavailable("gpu"), reason="a GPU is usable here")

TANH = """
from specgrad.zoo._xp import namespace
def forward(x):
    return namespace(x).tanh(x)
def backward(g, x):
    t = namespace(x).tanh(x)
    return g * (1 - t * t)
"""

SPEC = """specgrad: 1
name: tanhy
description: tanh, namespace generic
forward: layer_mod:forward
backward: layer_mod:backward
inputs:
  x: {{shape: [3, 5]}}
dtypes: [float32, float64]
{extra}"""


def _spec(tmp_path: Path, extra: str = "", source: str = TANH) -> Path:
    (tmp_path / "layer_mod.py").write_text(source)
    path = tmp_path / "tanhy.yaml"
    path.write_text(SPEC.format(extra=extra))
    return path


@NO_GPU
def test_asking_for_a_gpu_that_is_not_there_is_exit_2_without_a_traceback(tmp_path: Path) -> None:
    for device in ("gpu", "both", "cpu,gpu"):
        r = run_subprocess(["validate", str(SPECS / "relu.yaml"), "--device", device], tmp_path)
        assert r.code == 2, r.text
        assert r.err.startswith("specgrad: error: the gpu device") and "Traceback" not in r.text
        assert "pip install 'specgrad[gpu]'" in r.err or "no CUDA device is usable" in r.err


def test_an_unknown_device_is_exit_2(cli: Callable[..., CliResult]) -> None:
    r = cli("validate", SPECS / "relu.yaml", "--device", "tpu")
    assert r.code == 2 and "unknown device 'tpu' (known: cpu, gpu, sim, both)" in r.err


def test_cpu_and_sim_report_per_device_and_agree(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = cli("validate", _spec(tmp_path), "--device", "cpu,sim", "-j", "1", "--json", report)
    assert r.code == 0, r.text
    assert "device" in r.out and "cpu vs sim" in r.out
    document = json.loads(report.read_text())
    assert set(document["environment"]["devices"]) == {"cpu", "sim"}
    assert document["environment"]["devices"]["sim"].startswith("simulated: numpy")
    checks = document["checks"]
    by_device = {d: [c for c in checks if c["device"] == d] for d in ("cpu", "sim")}
    ids = {c["id"] for c in checks}
    assert "tanhy[float32,random,sim]::x" in ids and "tanhy[float32,random]::device.sim" in ids
    agreement = [c for c in checks if c["target"] == "device.sim"]
    assert len(agreement) == 2 * 3 and all(c["status"] == "PASS" and c["device"] == "cpu" for c in agreement)
    assert len(by_device["sim"]) == len(by_device["cpu"]) - len(agreement)
    assert "cupy" not in sys.modules  # the simulated device never needs it


def test_the_device_runs_alike_in_workers(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    path = _spec(tmp_path)
    figures = []
    for jobs in ("1", "2"):
        report = tmp_path / f"r{jobs}.json"
        assert cli("validate", path, "--device", "cpu,sim", "-j", jobs, "--json", report).code == 0
        checks = json.loads(report.read_text())["checks"]
        figures.append([(c["id"], c["status"], c.get("figures")) for c in checks])
    assert figures[0] == figures[1]


def test_a_layer_that_converts_to_numpy_fails_on_the_device_with_a_hint(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    source = "import numpy as np\n" + TANH.replace("namespace(x).tanh(x)", "np.tanh(np.asarray(x))")
    path = _spec(tmp_path, source=source)
    assert cli("validate", path, "-j", "1").code == 0
    r = cli("validate", path, "--device", "sim", "-j", "1")
    assert r.code == 1
    assert "Implicit conversion to a NumPy array is not allowed" in r.out
    assert "not array-namespace generic" in r.out and "`device: cpu`" in r.out
    # declared CPU-only, the device's checks are skipped with the reason (exit 0)
    path = _spec(tmp_path, "device: cpu\n", source=source)
    r = cli("validate", path, "--device", "cpu,sim", "-j", "1")
    assert r.code == 0, r.text
    assert "checks skipped: implementations or devices not run" in r.out
    assert "note: device sim not used: tanhy runs on cpu only" in r.out


@NO_GPU
def test_a_spec_asking_for_both_devices_runs_the_cpu_where_there_is_no_gpu(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    r = cli("validate", _spec(tmp_path, "device: both\n"), "-j", "1")
    assert r.code == 0, r.text
    assert "note: device gpu unavailable: the gpu device" in r.out
    assert "checks skipped: implementations or devices not run" in r.out


def test_list_names_the_devices_without_needing_them(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    r = cli("list", _spec(tmp_path), "--device", "both", "-k", "random and float64")
    assert r.code == 0, r.text
    ids = r.out.split()
    assert "tanhy[float64,random]::x" in ids and "tanhy[float64,random,gpu]::x" in ids
    assert "tanhy[float64,random]::device.gpu" in ids


def test_the_schema_rejects_an_unknown_device_with_its_line(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    r = cli("lint", _spec(tmp_path, "device: tpu\n"))
    assert r.code == 2
    assert "tanhy.yaml:9" in r.text and "device" in r.text


def test_the_zoo_runs_unchanged_on_the_simulated_device(tmp_path: Path) -> None:
    """Every shipped spec, numpy layers and the torch/jax implementations, under cupy's
    rules, compared with the CPU (one dtype: the full zoo runs in the GPU tests)."""
    report = tmp_path / "zoo.json"
    r = run_subprocess(
        ["validate", str(SPECS), "--device", "cpu,sim", "--dtype", "float32", "-q", "--json", str(report)],
        REPO,
    )
    assert r.code == 0, r.text[-3000:]
    checks = json.loads(report.read_text())["checks"]
    agreement = [c for c in checks if c["target"] == "device.sim"]
    assert len(agreement) > 50 and {c["status"] for c in agreement} == {"PASS"}
    assert {c["status"] for c in checks} <= {"PASS", "SKIP"}


def test_a_broken_cupy_install_is_exit_2_or_a_skip_with_its_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "cupy").mkdir(parents=True)
    (fake / "cupy" / "__init__.py").write_text(
        "raise OSError('libcudart.so.12: cannot open shared object file')\n"
    )
    r = run_subprocess(["validate", str(SPECS / "relu.yaml"), "--device", "gpu"], tmp_path, path=[fake])
    assert r.code == 2 and "Traceback" not in r.text
    assert "cupy, which failed to import: OSError: libcudart.so.12" in r.err
    spec = _spec(tmp_path, "device: both\n")
    r = run_subprocess(["validate", str(spec), "-j", "2"], tmp_path, path=[fake, tmp_path])
    assert r.code == 0, r.text
    assert "checks skipped: implementations or devices not run" in r.out and "failed to import" in r.out


def test_failures_on_each_device_are_reported_under_their_own_ids(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    source = "def forward(x):\n    raise ValueError('boom')\ndef backward(g, x):\n    return g\n"
    r = cli(
        "validate", _spec(tmp_path, source=source), "--device", "cpu,sim", "--dtype", "float64", "-j", "1"
    )
    assert r.code == 1
    assert "ERROR tanhy[float64,random]::x" in r.out and "ERROR tanhy[float64,random,sim]::x" in r.out
    assert "tanhy [float64, case random, device sim]" in r.out
