"""The directional (fast) method and stratified sampling of large tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.numerics.sampling import COMPONENT_FLOOR, directions, stratified
from specgrad.results import Status
from tests.unit.test_runner import SQUARE, run

WRONG_ONE = "def forward(x):\n    return x * x\ndef backward(g, x):\n    d = 2 * g * x\n    d[1, 2] *= 1.01\n    return d\n"
RELU = "def forward(x):\n    return np.maximum(x, 0)\ndef backward(g, x):\n    return g * (x > 0)\n"


def test_directional_passes_a_right_gradient_with_k_projections(tmp_path: Path) -> None:
    r = run(tmp_path, SQUARE, method={"mode": "directional", "directions": 5}, dtypes=["float32", "float64"])
    assert r["x"].status is Status.PASS and r["x"].method == "directional"
    assert r["x"].comparison is not None and r["x"].comparison.size == 5


def test_directional_catches_one_wrong_element(tmp_path: Path) -> None:
    r = run(tmp_path, WRONG_ONE, method={"mode": "directional"})
    assert r["x"].status is Status.FAIL and "seeded directions" in r["x"].message


def test_directional_falls_back_to_elements_at_kinks(tmp_path: Path) -> None:
    zeros = {"x": {"shape": [3, 4], "fill": {"kind": "special", "values": [0.0, 1.0, -1.0]}}}
    r = run(tmp_path, RELU, method={"mode": "directional"}, inputs=zeros)
    assert r["x"].status is Status.PASS and r["x"].kinks == 4
    assert r["x"].method == "elementwise (the directions crossed kinks)"


def test_sampled_elements_are_recorded_and_judged(tmp_path: Path) -> None:
    big = {"x": {"shape": [20, 30]}}
    r = run(tmp_path, SQUARE, inputs=big, method={"max_elements": 40}, structure="dense")
    assert r["x"].status is Status.PASS and r["x"].sample is not None and len(r["x"].sample) <= 40
    assert r["x"].comparison is not None and r["x"].comparison.size == len(r["x"].sample)
    assert r["x"].to_dict()["sample"] == {"seed": 42, "flat_indices": list(r["x"].sample)}
    wrong = run(
        tmp_path,
        WRONG_ONE.replace("d[1, 2]", "d[-1, -1]"),
        inputs=big,
        method={"max_elements": 40},
        structure="dense",
    )
    assert wrong["x"].status is Status.FAIL and "x[19, 29]" in wrong["x"].message  # a corner


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple), st.integers(1, 200), st.integers(0, 99)
)
def test_stratified_sample(shape: tuple[int, ...], n: int, seed: int) -> None:
    size = int(np.prod(shape))
    picks = stratified(shape, n, seed, "x")
    if size <= n:
        assert picks is None
        return
    assert picks is not None and 0 < len(picks) <= n
    assert list(picks) == sorted(set(picks)) and 0 <= picks[0] and picks[-1] < size
    assert picks[0] == 0  # the first corner
    assert picks == stratified(shape, n, seed, "x")
    if n >= 8:  # one pick per stratum: no half of the tensor is left out
        half = size // 2
        assert any(p < half for p in picks) and any(p >= half for p in picks)


def test_directions_have_a_component_floor() -> None:
    d = directions((50,), 4, 0, "x")
    assert d.shape == (4, 50)
    np.testing.assert_allclose(np.sqrt((d**2).mean(axis=1)), 1.0)
    # before normalising every |component| >= COMPONENT_FLOOR, and the rms of floor + |z| is < 2
    assert (np.abs(d) >= COMPONENT_FLOOR / 2).all()


def test_fast_mode_reports_a_forward_failing_at_a_moved_point_as_the_checks_error(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    if not np.allclose(x.sum(), 1.0, rtol=0, atol=1e-9):\n"
        "        raise ValueError('rows must sum to one')\n    return x * x\n"
        "def backward(g, x):\n    return 2 * g * x\n"
    )
    one = {"x": {"shape": [4], "fill": {"kind": "constant", "value": 0.25}}}
    r = run(tmp_path, src, inputs=one, method={"mode": "directional"})
    assert r["x"].status is Status.ERROR and "rows must sum to one" in r["x"].message


def test_a_structure_is_cheaper_than_a_sample_and_wins(tmp_path: Path) -> None:
    """An elementwise layer costs two calls for every element: no sample is needed."""
    r = run(tmp_path, SQUARE, inputs={"x": {"shape": [20, 30]}}, method={"max_elements": 40})
    assert r["x"].status is Status.PASS and r["x"].sample is None
    assert r["x"].method.startswith("colored: 1 group,")
