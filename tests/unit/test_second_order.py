"""A double backward, checked as the layer NAME.second_order whose forward is backward."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from specgrad.compile import compile_spec
from specgrad.results import CheckResult, Status
from specgrad.runner import run_spec
from specgrad.validate import parse_spec

CUBE = """import numpy as np
def forward(x):
    return x ** 3
def backward(g, x):
    return 3 * g * x * x
def double_backward(v, g, x):
    return 6 * v * g * x, 3 * v * x * x
def double_backward_wrong(v, g, x):
    return 3 * v * g * x, 3 * v * x * x
"""


def _run(tmp_path: Path, double: str) -> list[CheckResult]:
    (tmp_path / "cube_mod.py").write_text(CUBE)
    doc = {
        "specgrad": 1,
        "name": "cube",
        "description": "x^3",
        "forward": "cube_mod:forward",
        "backward": "cube_mod:backward",
        "inputs": {"x": {"shape": [3, 4]}},
        "dtypes": ["float32", "float64"],
        "second_order": {"backward": f"cube_mod:{double}", "grad_out": {"shape": [3, 4]}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    spec = parse_spec(tmp_path / "s.yaml")
    try:
        return list(run_spec(spec, compile_spec(spec)))
    finally:
        sys.modules.pop("cube_mod", None)


def test_a_right_double_backward_passes_under_its_own_ids(tmp_path: Path) -> None:
    results = _run(tmp_path, "double_backward")
    assert all(r.status in (Status.PASS, Status.SKIP) for r in results), [
        (r.check_id, r.message) for r in results if r.status is not Status.PASS
    ]
    ids = {r.check_id for r in results}
    assert "cube[float64,random]::x" in ids
    assert {"cube.second_order[float32,special]::x", "cube.second_order[float64,wide]::grad_out"} <= ids


def test_a_wrong_double_backward_fails_on_the_tensor_it_gets_wrong(tmp_path: Path) -> None:
    bad = {(r.spec, r.target) for r in _run(tmp_path, "double_backward_wrong") if r.status is Status.FAIL}
    assert bad == {("cube.second_order", "x"), ("cube.second_order", "contract.taylor")}
