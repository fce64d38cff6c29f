"""-j N: worker processes give the results of one process, in the same order; a worker
that dies takes only its own checks with it; every check runs BLAS on one thread."""

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
from tests.conftest import SPECS, dedent, run_subprocess

ZOO = ["conv2d", "linear", "softmax", "maxpool2d", "batchnorm", "tanh"]


def _checks(report: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in c.items() if k != "duration_s"} for c in json.loads(report.read_text())["checks"]
    ]


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ZOO:
        shutil.copy(SPECS / f"{name}.yaml", folder)
    (folder / "buggy.py").write_text(BUGGY)
    (folder / "buggy.yaml").write_text(SPEC.format(name="buggy", module="buggy"))
    return folder


def test_any_number_of_workers_gives_the_same_results_in_the_same_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    reports = {}
    for jobs in ("1", "2", "3"):
        reports[jobs] = tmp_path / f"j{jobs}.json"
        assert main(["validate", str(folder), "-q", "-j", jobs, "--json", str(reports[jobs])]) == 1
    one = _checks(reports["1"])
    assert len(one) > 300 and any(c["status"] == "FAIL" for c in one)
    assert _checks(reports["2"]) == one and _checks(reports["3"]) == one


def test_a_worker_that_dies_takes_only_its_own_checks(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "crash.py").write_text(CRASH)
    (folder / "crash.yaml").write_text(SPEC.format(name="crash", module="crash"))
    report = tmp_path / "r.json"
    assert main(["validate", str(folder), "-q", "-j", "2", "--json", str(report)]) == 1
    checks = _checks(report)
    crashed = [c for c in checks if c["spec"] == "crash"]
    assert crashed and all(c["status"] == "ERROR" and "killed by SIGSEGV" in c["message"] for c in crashed)
    others = [c for c in checks if c["spec"] in ZOO]
    assert others and all(c["status"] in ("PASS", "SKIP") for c in others)


@pytest.mark.e2e
def test_every_check_runs_blas_on_one_thread_in_workers(tmp_path: Path) -> None:
    """One BLAS thread per check whatever -j: N workers use N cores, and no figure depends
    on how a BLAS split its sums."""
    (tmp_path / "probe.py").write_text(
        dedent(
            """
            import os
            from pathlib import Path

            def forward(x):
                Path(os.environ["PROBE_OUT"]).write_text(os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
                return x * 1.0

            def backward(g, x):
                return g * 1.0
            """
        )
    )
    (tmp_path / "a.yaml").write_text(SPEC.format(name="a", module="probe"))
    out = tmp_path / "threads.txt"
    import os

    os.environ["PROBE_OUT"] = str(out)
    try:
        result = run_subprocess(["validate", ".", "-q", "-j", "2"], tmp_path)
    finally:
        del os.environ["PROBE_OUT"]
    assert result.code == 0, result.text
    assert out.read_text() == "1"
