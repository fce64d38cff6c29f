"""--executor dask on a LocalCluster of 2 workers over loopback: the results of one process,
a crashing layer is its check's ERROR, a Dask worker killed mid-run costs a retry on the
other worker (and a plan that kills every worker it lands on is ERROR after one retry)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from specgrad.cli import main
from tests.conftest import BUGGY_LAYER as BUGGY
from tests.conftest import CRASH_LAYER as CRASH
from tests.conftest import LAYER_SPEC as SPEC
from tests.conftest import SPECS, run_subprocess

pytest.importorskip("distributed")

pytestmark = pytest.mark.e2e

#: kills the Dask worker whose worker process runs it (its parent), the first time only
KILL_ONCE = """
import os, signal, time
from pathlib import Path

MARK = Path(__file__).with_name("killed-once")

def forward(x):
    if not MARK.exists():
        MARK.write_text(str(os.getppid()))
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
    return x * x

def backward(g, x):
    return 2 * g * x
"""

#: kills every Dask worker it runs on in float32 (in float64 it is right)
KILL_ALWAYS = """
import os, signal, time

def forward(x):
    if x.dtype == "float32":
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
    return x * x

def backward(g, x):
    return 2 * g * x
"""


def _checks(report: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads(report.read_text())
    return {c["id"]: {k: v for k, v in c.items() if k != "duration_s"} for c in doc["checks"]}


def _folder(tmp_path: Path, **layers: str) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("linear", "tanh", "softmax"):
        shutil.copy(SPECS / f"{name}.yaml", folder)
    for name, code in layers.items():
        (folder / f"{name}.py").write_text(code)
        (folder / f"{name}.yaml").write_text(SPEC.format(name=name, module=name))
    return folder


def test_a_local_dask_cluster_gives_the_results_of_one_process(tmp_path: Path) -> None:
    folder = _folder(tmp_path, buggy=BUGGY)
    one, dask = tmp_path / "one.json", tmp_path / "dask.json"
    assert main(["validate", str(folder), "-q", "-j", "1", "--json", str(one)]) == 1
    result = run_subprocess(
        ["validate", str(folder), "-q", "--executor", "dask", "-j", "2", "--json", str(dask)], tmp_path
    )
    assert result.code == 1, result.text
    assert "Traceback" not in result.text and result.err.strip() == ""
    assert _checks(dask) == _checks(one)
    assert list(_checks(dask)) == list(_checks(one))  # reported spec by spec, in order


def test_a_crashing_layer_is_its_check_s_error_and_the_dask_worker_lives_on(tmp_path: Path) -> None:
    folder = _folder(tmp_path, crash=CRASH)
    report = tmp_path / "r.json"
    result = run_subprocess(
        ["validate", str(folder), "-q", "--executor", "dask", "-j", "2", "--json", str(report)], tmp_path
    )
    assert result.code == 1, result.text
    checks = _checks(report).values()
    crashed = [c for c in checks if c["spec"] == "crash"]
    assert crashed and all(c["status"] == "ERROR" and "killed by SIGSEGV" in c["message"] for c in crashed)
    assert all(c["status"] in ("PASS", "SKIP") for c in checks if c["spec"] != "crash")
    assert not json.loads(report.read_text())["notes"]  # no Dask worker died: nothing retried


def test_a_dask_worker_killed_mid_run_is_retried_once_on_the_other_worker(tmp_path: Path) -> None:
    folder = _folder(tmp_path, killer=KILL_ONCE)
    report = tmp_path / "r.json"
    result = run_subprocess(
        ["validate", str(folder), "-q", "--executor", "dask", "-j", "2", "--json", str(report)], tmp_path
    )
    assert (folder / "killed-once").exists(), "the layer never ran"
    assert result.code == 0, result.text
    doc = json.loads(report.read_text())
    checks = _checks(report)
    assert all(c["status"] in ("PASS", "SKIP") for c in checks.values())
    assert {c["spec"] for c in checks.values()} == {
        "linear",
        "linear.second_order",
        "tanh",
        "tanh.second_order",
        "softmax",
        "killer",
    }
    retried = [n for n in doc["notes"] if "died while running" in n]
    assert retried and any("killer" in n for n in retried), doc["notes"]
    one = tmp_path / "one.json"
    assert main(["validate", str(folder), "-q", "-j", "1", "--json", str(one)]) == 0
    assert checks == _checks(one)


def test_a_plan_that_kills_every_worker_it_lands_on_is_error_after_one_retry(tmp_path: Path) -> None:
    """The float32 cases of `killer` kill each Dask worker they run on; they share a batch (a
    spec's plans) with its float64 cases, which must not be blamed: after the batch's first
    death its plans go again one by one, and only the float32 ones die a second time."""
    folder = _folder(tmp_path, killer=KILL_ALWAYS)
    report = tmp_path / "r.json"
    result = run_subprocess(
        ["validate", str(folder), "-q", "--executor", "dask", "-j", "2", "--json", str(report)], tmp_path
    )
    assert result.code == 1, result.text
    assert "Traceback" not in result.text
    checks = _checks(report).values()
    killed = [c for c in checks if c["spec"] == "killer" and c["dtype"] == "float32"]
    assert killed and all(c["status"] == "ERROR" for c in killed)
    assert all(
        "died while running it" in c["message"] and "and so did the one it was run again on" in c["message"]
        for c in killed
    )
    others = [c for c in checks if c not in killed]
    assert any(c["spec"] == "killer" for c in others)
    assert others and all(c["status"] in ("PASS", "SKIP") for c in others), {
        c["id"]: c["message"] for c in others if c["status"] not in ("PASS", "SKIP")
    }
    assert any("died while running" in n for n in json.loads(report.read_text())["notes"])


def test_an_unreachable_scheduler_is_a_usage_error(tmp_path: Path) -> None:
    shutil.copy(SPECS / "tanh.yaml", tmp_path)
    result = run_subprocess(["validate", "tanh.yaml", "--scheduler", "tcp://127.0.0.1:1"], tmp_path)
    assert result.code == 2 and "--scheduler tcp://127.0.0.1:1: cannot reach a Dask scheduler" in result.err
    assert "Traceback" not in result.text
    result = run_subprocess(
        ["validate", "tanh.yaml", "--executor", "local", "--scheduler", "tcp://x:1"], tmp_path
    )
    assert result.code == 2 and "goes with --executor dask" in result.err


def test_the_project_s_scheduler_is_used_unless_the_command_line_says_local(tmp_path: Path) -> None:
    shutil.copy(SPECS / "tanh.yaml", tmp_path)
    # an address Dask refuses at once (the unreachable one costs the 10 s above)
    (tmp_path / "pyproject.toml").write_text('[tool.specgrad]\nscheduler = "no-port-here"\n')
    result = run_subprocess(["validate", "tanh.yaml", "-q", "--dtype", "float64"], tmp_path)
    assert result.code == 2 and "--scheduler no-port-here: cannot reach" in result.err, result.text
    result = run_subprocess(
        ["validate", "tanh.yaml", "-q", "--dtype", "float64", "--executor", "local"], tmp_path
    )
    assert result.code == 0, result.text
