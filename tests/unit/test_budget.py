"""The memory estimate against what checks really allocate (tracemalloc sees numpy's
buffers), and the refusal of a check over the limit."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from specgrad.budget import STACK_BYTES, case_estimate, check_estimate, limit, refusal, size_text
from specgrad.compile import compile_spec
from specgrad.process import one_blas_thread
from specgrad.results import CheckResult, Status
from specgrad.runner import Engines, run_plan
from specgrad.validate import parse_spec
from tests.conftest import dedent

LAYERS = """
import numpy as np

def tanh_f(x):
    return np.tanh(x)

def tanh_b(g, x):
    return g * (1 - np.tanh(x) ** 2)

def lin_f(x, w):
    return x @ w

def lin_b(g, x, w):
    return g @ w.T, x.T @ g

def sum_f(x):
    return x.sum(axis=1)

def sum_b(g, x):
    return np.broadcast_to(g[:, None], x.shape).copy()

def outer_f(a, b):
    return a[:, None] * b[None, :]

def outer_b(g, a, b):
    return g @ b, a @ g
"""

#: (layer, inputs, extra spec lines): structured (one group, batched groups), dense
#: element by element, a wide output from few elements, directional
SHAPES = [
    ("tanh", {"x": [100, 300]}, ""),
    ("tanh", {"x": [30, 40]}, "structure: dense"),
    ("sum", {"x": [50, 600]}, ""),
    ("lin", {"x": [16, 64], "w": [64, 32]}, ""),
    ("outer", {"a": [300], "b": [400]}, ""),
    ("tanh", {"x": [200, 300]}, "method: {mode: directional}"),
]


class _Peaks:
    """The memory each gradient check took beyond what was held when it began."""

    def __init__(self) -> None:
        self.begun: tuple[tuple[str, ...], int] | None = None
        self.extra: dict[str, int] = {}

    def step(self, label: str, targets: tuple[str, ...], at_least: float = 0.0) -> None:
        self.begun = (targets, tracemalloc.get_traced_memory()[0])
        tracemalloc.reset_peak()

    def result(self, result: CheckResult) -> None:
        if self.begun and self.begun[0] == (result.target,):
            self.extra[result.target] = tracemalloc.get_traced_memory()[1] - self.begun[1]
            self.begun = None


def _spec(tmp_path: Path, layer: str, inputs: dict[str, list[int]], extra: str) -> Path:
    (tmp_path / "big.py").write_text(dedent(LAYERS))
    lines = "\n".join(f"  {name}: {{shape: {shape}}}" for name, shape in inputs.items())
    path = tmp_path / "s.yaml"
    path.write_text(
        f"specgrad: 1\nname: s\ndescription: d\nforward: big:{layer}_f\nbackward: big:{layer}_b\n"
        f"inputs:\n{lines}\ndtypes: [float64]\ncases: [random]\n{extra}\n"
    )
    return path


@pytest.mark.parametrize("layer, inputs, extra", SHAPES, ids=[f"{s[0]}-{s[2] or 'auto'}" for s in SHAPES])
def test_estimate_holds_the_measured_peak_and_is_not_far_above_it(
    tmp_path: Path, layer: str, inputs: dict[str, list[int]], extra: str
) -> None:
    plan = compile_spec(parse_spec(_spec(tmp_path, layer, inputs, extra)))[0]
    outputs = {"tanh": lambda s: s["x"], "sum": lambda s: s["x"][:1], "lin": lambda s: [16, 32]}
    out_shape = outputs.get(layer, lambda s: [300, 400])(inputs)
    peaks = _Peaks()
    tracemalloc.start()
    try:
        with one_blas_thread():
            results = run_plan(plan, Engines(), peaks)
    finally:
        tracemalloc.stop()
    assert all(r.status is Status.PASS for r in results if not r.target.startswith("contract.")), results
    for name in inputs:
        e = check_estimate(plan, name, int(np.prod(out_shape)))
        engine = e.per_element + e.outputs + e.stacked
        measured = peaks.extra[name]
        assert measured <= engine, (name, size_text(measured), e.describe())
        assert e.per_element + e.outputs <= 3 * measured + STACK_BYTES, (
            name,
            size_text(measured),
            e.describe(),
        )


def test_case_estimate_counts_each_tensor_in_its_dtype_and_its_float64_copies(tmp_path: Path) -> None:
    plan = compile_spec(parse_spec(_spec(tmp_path, "lin", {"x": [16, 64], "w": [64, 32]}, "")))[0]
    f32 = replace(plan, dtype="float32")
    assert case_estimate(plan).tensors == (16 * 64 + 64 * 32) * (8 + 16)
    assert case_estimate(f32).tensors == (16 * 64 + 64 * 32) * (4 + 16)


def test_limit_is_max_memory_else_a_share_of_what_is_available(tmp_path: Path) -> None:
    plan = compile_spec(parse_spec(_spec(tmp_path, "tanh", {"x": [4, 5]}, "")))[0]
    assert limit(compile_spec(plan.spec, max_memory=1 << 20)[0]) == (
        1 << 20,
        "--max-memory or [tool.specgrad] max_memory",
    )
    found = limit(plan)
    assert found is not None and 0 < found[0] and "--max-memory sets it" in found[1]
    big = check_estimate(plan, "x", 10**12)
    assert refusal(big, plan, "the gradient check of x") is not None  # a terabyte of outputs
    assert refusal(check_estimate(plan, "x", 20), plan, "x") is None


def test_a_check_over_the_limit_is_refused_with_the_estimate_others_run(tmp_path: Path) -> None:
    path = _spec(tmp_path, "outer", {"a": [300], "b": [4]}, "")
    plans = compile_spec(parse_spec(path), max_memory=4 << 20)
    results = {r.target: r for r in run_plan(plans[0], Engines())}
    # a: 300 elements, but outputs 1200: fits; the limit is below the stacked 16 MiB only
    # where stacking is given less, so it is what --max-memory leaves
    assert results["contract.forward_output"].status is Status.PASS
    tight = compile_spec(parse_spec(path), max_memory=60_000)
    refused = {r.target: r for r in run_plan(tight[0], Engines())}
    assert refused["a"].status is Status.ERROR
    assert "refused before running: the gradient check of a needs an estimated" in refused["a"].message
    assert (
        "over the memory limit of 58.6 KiB (--max-memory or [tool.specgrad] max_memory)"
        in refused["a"].message
    )
    assert refused["contract.forward_output"].status is Status.PASS  # the contracts ran
    tiny = compile_spec(parse_spec(path), max_memory=1000)
    whole = run_plan(tiny[0], Engines())
    assert all(
        r.status is Status.ERROR and "the case needs" in r.message
        for r in whole
        if r.target != "contract.taylor"
    )


def test_the_taylor_test_and_comparisons_are_estimated_too(tmp_path: Path) -> None:
    from specgrad.budget import agreement_estimate, taylor_estimate

    plan = compile_spec(parse_spec(_spec(tmp_path, "lin", {"x": [16, 64], "w": [64, 32]}, "")))[0]
    taylor = taylor_estimate(plan, 16 * 32)
    assert taylor.per_element == 8 * 16 * (16 * 64 + 64 * 32) and taylor.outputs == 8 * 24 * 16 * 32
    agree = agreement_estimate(replace(plan, kind="agreement", targets=("agree.b",)))
    assert agree.total == case_estimate(plan).tensors * 4  # two sides, each a copy of outputs and gradients
    tight = compile_spec(plan.spec, max_memory=100 << 10)[0]
    results = {r.target: r for r in run_plan(tight, Engines())}
    assert results["contract.taylor"].status is Status.ERROR
    assert results["contract.taylor"].message.startswith("refused before running: the Taylor test needs")


def test_the_default_limit_is_shared_between_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specgrad.budget import WORKERS_VARIABLE

    plan = compile_spec(parse_spec(_spec(tmp_path, "tanh", {"x": [4, 5]}, "")))[0]
    monkeypatch.setattr("specgrad.budget.available_memory", lambda: 8 << 30)
    assert limit(plan) == (
        4 << 30,
        "half the memory available when it started, 8.0 GiB; --max-memory sets it",
    )
    monkeypatch.setenv(WORKERS_VARIABLE, "4")
    found = limit(plan)
    assert found is not None and found[0] == 1 << 30 and "8.0 GiB among 4 workers" in found[1]


def test_comparisons_of_implementations_get_the_max_memory_too(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text(dedent(LAYERS))
    path = tmp_path / "s.yaml"
    path.write_text(
        "specgrad: 1\nname: s\ndescription: d\nimplementations:\n"
        "  a: {forward: big:tanh_f, backward: big:tanh_b}\n  b: {forward: big:tanh_f, backward: big:tanh_b}\n"
        "inputs:\n  x: {shape: [4, 5]}\ndtypes: [float64]\ncases: [random]\n"
    )
    plans = compile_spec(parse_spec(path), max_memory=1024)
    agreement = [p for p in plans if p.kind == "agreement"]
    assert agreement and all(p.method.max_memory == 1024 for p in agreement)
    result = run_plan(agreement[0], Engines())[0]
    assert result.status is Status.ERROR and result.message.startswith(
        "refused before running: the comparison"
    )
