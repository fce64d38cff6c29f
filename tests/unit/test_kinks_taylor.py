"""Kinks (one-sided derivatives that differ) under each `kinks:` rule, points a step away
from a kink, and the Taylor test's orders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specgrad.numerics.taylor import taylor_test
from specgrad.results import Status
from tests.unit.test_runner import run

ABS = "def forward(x):\n    return np.abs(x)\ndef backward(g, x):\n    return g * np.sign(x)\n"
ABS_WRONG_AT_ZERO = (
    "def forward(x):\n    return np.abs(x)\n"
    "def backward(g, x):\n    return g * np.where(x == 0, 2.0, np.sign(x))\n"
)
RELU = "def forward(x):\n    return np.maximum(x, 0)\ndef backward(g, x):\n    return g * (x > 0)\n"
AT_ZERO = {"x": {"shape": [4, 6], "fill": {"kind": "special", "values": [0.0, 1.0, -0.5]}}}
NEAR_ZERO = {"x": {"shape": [2, 3], "fill": {"kind": "special", "values": [1e-7, -1e-7, 0.5]}}}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_kinks_pass_under_the_subgradient_rule_and_are_counted(tmp_path: Path, dtype: str) -> None:
    r = run(tmp_path, ABS, inputs=AT_ZERO, dtypes=[dtype])
    assert r["x"].status is Status.PASS, r["x"].message
    assert r["x"].kinks == 8 and "8 kink element(s) of x judged by the subgradient rule" in r["x"].message
    assert r["contract.taylor"].status is Status.SKIP


def test_a_value_outside_the_one_sided_derivatives_fails(tmp_path: Path) -> None:
    r = run(tmp_path, ABS_WRONG_AT_ZERO, inputs=AT_ZERO)
    assert r["x"].status is Status.FAIL


def test_kinks_skip_and_fail(tmp_path: Path) -> None:
    skipped = run(tmp_path, ABS_WRONG_AT_ZERO, inputs=AT_ZERO, kinks="skip")
    # the wrong value sits only on the kinks, which are left out
    assert skipped["x"].status is Status.PASS and "left out (kinks: skip)" in skipped["x"].message
    failed = run(tmp_path, ABS, inputs=AT_ZERO, kinks="fail")
    assert failed["x"].status is Status.FAIL and "the spec says kinks: fail" in failed["x"].message


def test_a_point_closer_to_the_kink_than_the_step_is_judged_by_its_own_derivative(tmp_path: Path) -> None:
    assert run(tmp_path, RELU, inputs=NEAR_ZERO)["x"].status is Status.PASS
    wrong = "def forward(x):\n    return np.maximum(x, 0)\ndef backward(g, x):\n    return g * (x > 1e-6)\n"
    assert run(tmp_path, wrong, inputs=NEAR_ZERO)["x"].status is Status.FAIL


def test_a_tie_counted_twice_is_not_a_subgradient(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    return x.max(axis=1)\n"
        "def backward(g, x):\n    return g[:, None] * (x == x.max(axis=1, keepdims=True))\n"
    )
    ties = {"x": {"shape": [3, 2], "fill": {"kind": "constant", "value": 1.0}}}
    r = run(tmp_path, src, inputs=ties)
    assert r["x"].status is Status.FAIL and "is not a subgradient" in r["x"].message
    first = src.replace("(x == x.max(axis=1, keepdims=True))", "(np.arange(2) == x.argmax(axis=1)[:, None])")
    assert run(tmp_path, first, inputs=ties)["x"].status is Status.PASS


# --- the Taylor test --------------------------------------------------------------------


def _taylor(f, grad, x, precision="float64", error=0.0):  # type: ignore[no-untyped-def]
    def loss(t):  # type: ignore[no-untyped-def]
        return float(f(t["x"])), 1e-16 * abs(float(f(t["x"])))

    d = np.random.default_rng(0).normal(size=x.shape)
    return taylor_test(loss, {"x": x}, {"x": d}, {"x": grad}, precision, error, np)


def test_taylor_orders_tell_right_from_wrong() -> None:
    x = np.linspace(-1, 1, 7)
    f = lambda a: np.sum(np.sin(a))
    right = _taylor(f, np.cos(x), x)
    assert right.order is not None and right.order == pytest.approx(2, abs=0.1) and right.second_order
    wrong = _taylor(f, np.cos(x) * 1.01, x)
    assert wrong.order is not None and wrong.order < 1.3 and not wrong.second_order
    assert "order 1." in wrong.describe()


def test_taylor_order_is_not_read_off_one_unlucky_pair() -> None:
    """x^3 near its inflection point: the h^2 and h^3 terms of the residual cancel near one
    step, so that pair alone reads far below 2; the fit over the ladder does not."""
    d = np.random.default_rng(0).normal(size=1)  # the direction _taylor draws
    x = -(2.0**-6 / 8) * d / 3  # residual h^2 |3x + h d| d^2 vanishes at the fourth step
    r = _taylor(lambda a: np.sum(a**3), 3 * x**2, x)
    finest = np.log2(r.residuals[-2] / r.residuals[-1])
    assert finest < 1.5 and r.second_order, r.describe()


def test_taylor_non_finite_residuals_are_not_second_order() -> None:
    x = np.linspace(-1, 1, 5)
    r = _taylor(lambda a: np.sum(np.sin(a)), np.full(5, np.nan), x)
    assert not r.second_order and "nan" in r.describe()


def test_taylor_linear_function_sits_at_the_floor() -> None:
    x = np.linspace(-1, 1, 5)
    w = np.arange(5.0)
    assert _taylor(lambda a: w @ a, w, x).order is None
    assert _taylor(lambda a: w @ a, w + 0.1, x).order == pytest.approx(1, abs=0.05)


def test_taylor_floor_allows_a_low_precision_gradient() -> None:
    x = np.linspace(-1, 1, 50)
    f = lambda a: np.sum(a**3)
    rounded = (3 * x**2).astype(np.float16).astype(np.float64)
    error = 8 * 2.0**-11 * float(np.sum(np.abs(3 * x**2)) * 3)
    assert _taylor(f, rounded, x, error=error).second_order


def test_taylor_sees_a_kink_along_the_direction() -> None:
    x = np.array([0.0, 1.0, -1.0])
    assert not _taylor(lambda a: np.sum(np.abs(a)), np.sign(x), x).smooth


def test_kinks_of_different_kinds_are_not_judged_together(tmp_path: Path) -> None:
    """hardtanh at -1 and at +1 (the special values reach both): each end's elements take
    the derivative of the linear side, a valid subgradient element by element; moved all
    together they would seem to break the rule, so only equal values are grouped."""
    src = (
        "def forward(x):\n    return np.clip(x, -1, 1)\n"
        "def backward(g, x):\n    return g * ((x >= -1) & (x <= 1))\n"
    )
    ends = {"x": {"shape": [4, 6], "fill": {"kind": "special", "values": [-1.0, 1.0, 0.5]}}}
    for seed in range(4):
        r = run(tmp_path, src, inputs=ends, seed=seed)
        assert r["x"].status is Status.PASS and r["x"].kinks == 16, r["x"].message


def test_sampled_ties_are_judged_element_by_element(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    return x.reshape(-1, 2).max(axis=1)\n"
        "def backward(g, x):\n    w = x.reshape(-1, 2)\n"
        "    return (g[:, None] * (np.arange(2) == w.argmax(axis=1)[:, None])).reshape(x.shape)\n"
    )
    ties = {"x": {"shape": [40], "fill": {"kind": "special", "values": [1.0, 1.0, 0.5, 0.5, 2.0, -1.0]}}}
    for seed in range(3):
        r = run(tmp_path, src, inputs=ties, seed=seed, method={"max_elements": 12})
        assert r["x"].status is Status.PASS, r["x"].message


CRELU = """
def forward(x):
    return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
def backward(g, x):
    n = x.shape[-1]
    return g[..., :n] * (x > 0) - g[..., n:] * (x < 0)
"""

LINEAR_RELU = """
def forward(x, w):
    return np.maximum(x @ w, 0)
def backward(g, x, w):
    gz = g * (x @ w > 0)
    return gz @ w.T, x.T @ gz
"""


@pytest.mark.parametrize("seed", [0, 15, 16, 18])
def test_chain_rule_choices_at_kinks_are_admissible(tmp_path: Path, seed: int) -> None:
    """CReLU's two relus of one input each take their own side at 0, and relu(x @ w) puts
    several unrelated pre-activations on the kink at once: the admissible values sum the
    outputs' one-sided slopes, and only jointly smooth groups (ties) are judged together."""
    r = run(tmp_path, CRELU, inputs={"x": {"shape": [4, 6]}}, cases=["special"], seed=seed)
    assert r["x"].status is Status.PASS, r["x"].message
    r = run(
        tmp_path,
        LINEAR_RELU,
        inputs={"x": {"shape": [4, 8]}},
        parameters={"w": {"shape": [8, 6]}},
        cases=["special"],
        seed=seed,
        dtypes=["float32", "float64"],
    )
    assert r["x"].status is Status.PASS and r["w"].status is Status.PASS, (r["x"].message, r["w"].message)
