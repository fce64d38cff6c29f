"""Unit tests of the numerics: input generation, central differences, comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.errors import Location
from specgrad.model import SPECIAL_VALUES, Case, Fill, TensorSpec
from specgrad.numerics.compare import compare
from specgrad.numerics.finite_diff import PerturbationError, central_difference
from specgrad.numerics.inputs import fill_array, make_upstream
from specgrad.numerics.tolerance import DEFAULT_TOLERANCES, UNIT_ROUNDOFF

RNG = np.random.default_rng(0)


# --- inputs ---------------------------------------------------------------------------


def test_special_values_cycle_in_c_order() -> None:
    a = fill_array(Fill("special"), (2, 4), "float16", RNG)
    assert a.dtype == np.float16
    assert a.reshape(-1).tolist() == [0.0, 0.5, 1.0, 1.5, -1.0, -0.5, 0.0, 0.5]


def test_scalar_shape() -> None:
    a = fill_array(Fill("constant", values=(2.5,)), (), "float32", RNG)
    assert a.shape == () and a.dtype == np.float32 and float(a) == 2.5


def test_integers_and_uniform_bounds() -> None:
    ints = fill_array(Fill("integers", low=2, high=5), (1000,), "int64", RNG)
    assert ints.dtype == np.int64 and ints.min() >= 2 and ints.max() <= 4
    u = fill_array(Fill("uniform", low=0.1, high=2.0), (1000,), "float64", RNG)
    assert u.min() >= 0.1 and u.max() < 2.0


def test_npy_fill(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(6.0).reshape(2, 3))
    a = fill_array(Fill("npy", path=tmp_path / "a.npy"), (2, 3), "float32", RNG)
    assert a.dtype == np.float32 and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="has shape"):
        fill_array(Fill("npy", path=tmp_path / "a.npy"), (6,), "float32", RNG)


def test_npy_refuses_pickles(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        fill_array(Fill("npy", path=tmp_path / "o.npy"), (1,), "float32", RNG)


def _spec_with(shapes: dict[str, tuple[int, ...]]):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    loc = Location(Path("s.yaml"))
    tensors = tuple(TensorSpec(n, "input", s, None, True, Fill("normal"), loc) for n, s in shapes.items())
    return SimpleNamespace(tensors=tensors)


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,4}", fullmatch=True),
        st.lists(st.integers(1, 5), max_size=3).map(tuple),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["float16", "float32", "float64"]),
)
def test_inputs_are_seeded_per_tensor(shapes: dict[str, tuple[int, ...]], seed: int, dtype: str) -> None:
    from specgrad.numerics.inputs import make_inputs

    case = Case("random", {}, Location(Path("s.yaml")))
    a = make_inputs(_spec_with(shapes), case, dtype, seed)  # type: ignore[arg-type]
    b = make_inputs(_spec_with(shapes), case, dtype, seed)  # type: ignore[arg-type]
    assert {k: v.shape for k, v in a.items()} == shapes
    assert all(v.dtype == np.dtype(dtype) for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # adding a tensor never changes the others' values
    c = make_inputs(_spec_with({**shapes, "zzzzz": (2,)}), case, dtype, seed)  # type: ignore[arg-type]
    assert all(np.array_equal(a[k], c[k]) for k in a)


def test_same_values_across_dtypes_up_to_rounding() -> None:
    from specgrad.numerics.inputs import make_inputs

    case = Case("random", {}, Location(Path("s.yaml")))
    spec = _spec_with({"x": (50,)})
    x32 = make_inputs(spec, case, "float32", 42)["x"]  # type: ignore[arg-type]
    x64 = make_inputs(spec, case, "float64", 42)["x"]  # type: ignore[arg-type]
    assert np.array_equal(x32, x64.astype(np.float32))


def test_special_case_values_differ_between_tensors(tmp_path: Path) -> None:
    """The built-in special case gives each tensor every value equally often in its own
    seeded order; an explicit special fill is cycled exactly as written."""
    import yaml

    from specgrad.numerics.inputs import make_inputs
    from specgrad.validate import parse_spec

    doc = {
        "specgrad": 1,
        "name": "t",
        "description": "d",
        "forward": "m:f",
        "backward": "m:b",
        "inputs": {
            "a": {"shape": [2, 3]},
            "b": {"shape": [2, 3]},
            "m": {"shape": [4], "fill": {"kind": "special", "values": [1.0, 0.0, 0.0, 1.0]}},
        },
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    spec = parse_spec(tmp_path / "s.yaml")
    assert [c.name for c in spec.cases] == ["random", "wide", "special"]
    special = make_inputs(spec, spec.cases[2], "float32", 0)
    a, b = special["a"].reshape(-1).tolist(), special["b"].reshape(-1).tolist()
    assert sorted(a) == sorted(b) == sorted(SPECIAL_VALUES)
    assert a != b
    again = make_inputs(spec, spec.cases[2], "float32", 0)
    assert all(np.array_equal(special[k], v) for k, v in again.items())
    assert special["m"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert make_inputs(spec, spec.cases[0], "float32", 0)["m"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_integer_fills_reach_both_ends_and_repeat() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        labels = fill_array(Fill("integers", low=0, high=5), (8,), "int64", rng)
        assert labels.min() == 0 and labels.max() == 4
        ids = fill_array(Fill("integers", low=0, high=100), (3,), "int64", rng)
        assert 0 in ids and 99 in ids and len(set(ids.tolist())) < 3


def test_wide_case_reaches_the_tails() -> None:
    rng = np.random.default_rng(0)
    u = fill_array(Fill("uniform", low=0.0, high=1.0, tails=True), (1000,), "float64", rng)
    assert np.all((u < 0.05) | (u >= 0.95)) and (u < 0.05).any() and (u >= 0.95).any()


def test_upstream_is_seeded_per_output() -> None:
    a = make_upstream({0: (3,), 2: (2, 2)}, "float32", 1)
    b = make_upstream({0: (3,), 2: (2, 2)}, "float32", 1)
    assert set(a) == {0, 2} and a[2].shape == (2, 2) and a[0].dtype == np.float32
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], make_upstream({0: (3,)}, "float32", 2)[0])


def test_special_values_are_exact_in_every_float_dtype() -> None:
    for dtype in ("float16", "float32", "float64"):
        assert np.asarray(SPECIAL_VALUES, dtype=dtype).astype(float).tolist() == list(SPECIAL_VALUES)


# --- central differences ------------------------------------------------------------


def _cd(f, x, g, dtype="float64", eps=None):  # type: ignore[no-untyped-def]
    eps = eps or DEFAULT_TOLERANCES[dtype].epsilon
    return central_difference(lambda: (f(x),), x, [g], eps, UNIT_ROUNDOFF[dtype], np)


def test_central_difference_matches_known_gradient() -> None:
    x = np.linspace(-1, 1, 7)
    g = np.linspace(0.5, 2, 7)
    num = _cd(np.sin, x, g)
    assert num.value.shape == x.shape and num.value.dtype == np.float64
    np.testing.assert_allclose(num.value, g * np.cos(x), rtol=1e-9, atol=1e-10)
    assert np.all(num.noise < 1e-8)


def test_central_difference_restores_the_tensor_in_place() -> None:
    x = np.arange(6.0).reshape(2, 3).astype(np.float32)
    before = x.copy()
    ident = id(x)
    _cd(lambda a: a * a, x, np.ones((2, 3)), "float32")
    assert id(x) == ident and np.array_equal(x, before)


def test_float32_uses_the_step_actually_taken() -> None:
    # f(x) = x; x + h is not exact in float32, but the recomputed step makes the slope 1
    x = np.array([0.7, 3.3, 1000.1], dtype=np.float32)
    num = _cd(lambda a: a.copy(), x, np.ones(3), "float32")
    np.testing.assert_allclose(num.value, 1.0, rtol=1e-6)


def test_step_below_resolution_takes_one_ulp() -> None:
    x = np.array([4096.0], dtype=np.float16)  # ulp is 4, far above h = 3e-2
    num = _cd(lambda a: a * 2, x, np.ones(1), "float16")
    assert num.value[0] == pytest.approx(2.0)


def test_multi_output_and_skipped_outputs() -> None:
    x = np.array([1.0, 2.0])
    f = lambda: (x * 3, x.astype(np.int64), x * x)
    num = central_difference(f, x, [np.ones(2), None, np.full(2, 2.0)], 1e-6, 2**-53, np)
    np.testing.assert_allclose(num.value, 3 + 2 * 2 * x, rtol=1e-8)


def test_non_finite_output_gives_nan_not_a_warning() -> None:
    x = np.array([1e-7, 1.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        num = _cd(lambda a: np.log(a), x, np.ones(2))
    assert np.isnan(num.value[0]) and np.isfinite(num.value[1])


def test_raising_forward_is_attributed_to_the_element() -> None:
    x = np.zeros(4)

    def f(a: np.ndarray) -> np.ndarray:
        if a[2] != 0:
            raise ValueError("domain")
        return a

    with pytest.raises(PerturbationError) as info:
        _cd(f, x, np.ones(4))
    assert info.value.index == 2 and np.array_equal(x, np.zeros(4))


def test_noise_estimate_scales_with_dtype_and_fan_out() -> None:
    x32 = np.ones(4, dtype=np.float32)
    wide = _cd(lambda a: np.repeat(a.sum(keepdims=True), 100), x32, np.ones(100), "float32")
    narrow = _cd(lambda a: a.copy(), x32, np.ones(4), "float32")
    # independent roundings add in quadrature: sqrt(100 outputs) x |f| = 4
    assert wide.noise.min() == pytest.approx(40 * narrow.noise.max(), rel=1e-3)
    x64 = np.ones(4)
    assert _cd(lambda a: a.copy(), x64, np.ones(4)).noise.max() < 1e-5 * narrow.noise.max()


# --- compare --------------------------------------------------------------------------


def _bound(n: np.ndarray, rtol: float, atol: float, noise: np.ndarray | None = None) -> np.ndarray:
    return atol + rtol * np.abs(n) + (0 if noise is None else noise)


def test_compare_pass_and_figures() -> None:
    a = np.array([[1.0, 2.0], [3.0, 0.0]])
    n = a + 1e-9
    c = compare(a, n, np.zeros_like(a), _bound(n, 1e-5, 1e-7), np)
    assert c.passed and c.violations == 0 and c.size == 4
    assert c.max_abs_err == pytest.approx(1e-9)
    assert c.worst_ratio < 0.1 and c.margin > 10


def test_compare_worst_element_is_the_largest_bound_violation() -> None:
    a = np.array([[1.0, 100.0], [0.0, 5.0]])
    n = np.array([[1.0, 101.0], [0.5, 5.0]])  # abs err 1 at [0,1] but 0.5 on a zero gradient
    c = compare(a, n, np.zeros_like(a), _bound(n, 1e-2, 1e-3), np)
    assert not c.passed and c.violations == 1
    assert c.worst_index == (1, 0) and (c.analytical, c.numerical) == (0.0, 0.5)
    assert c.max_abs_err == 1.0 and c.max_rel_err == 1.0
    assert c.bound == pytest.approx(1e-3 + 1e-2 * 0.5)
    assert c.worst_ratio == pytest.approx(0.5 / c.bound) and c.margin < 1
    assert c.violating == (2,)


def test_compare_reports_the_noise_floor() -> None:
    a, n = np.array([1.0, 2.0]), np.array([1.1, 2.0])
    noise = np.array([0.06, 0.01])
    assert not compare(a, n, noise, _bound(n, 0, 0.05), np).passed
    c = compare(a, n, noise, _bound(n, 0, 0.05, noise), np)
    assert c.passed and c.noise_floor == 0.06


def test_compare_nan_is_a_violation() -> None:
    a = np.array([1.0, np.nan, 2.0])
    n = np.array([1.0, 1.0, 2.0])
    c = compare(a, n, np.zeros(3), _bound(n, 1e-5, 1e-8), np)
    assert not c.passed and c.violations == 1 and c.worst_index == (1,)
    assert c.max_abs_err == float("inf")


def test_relative_error_is_the_cs231n_metric() -> None:
    c = compare(np.array([2.0]), np.array([1.0]), np.zeros(1), np.zeros(1), np)
    assert c.max_rel_err == pytest.approx(0.5)


def test_compare_interval_admits_every_value_between_the_one_sided_derivatives() -> None:
    a = np.array([0.0, 0.3, 1.0, 1.2])
    n = np.full(4, 0.5)  # the central difference at a kink: the mean of 0 and 1
    lo, hi = np.zeros(4), np.ones(4)
    c = compare(a, n, np.zeros(4), np.full(4, 0.1), np, (lo, hi))
    assert not c.passed and c.violations == 1 and c.worst_index == (3,)
    assert c.worst_ratio == pytest.approx(2.0)  # 0.2 outside the interval, bound 0.1


def test_default_steps_sit_below_the_rounding_optimum() -> None:
    for dtype, tol in DEFAULT_TOLERANCES.items():
        optimum = UNIT_ROUNDOFF[dtype] ** (1 / 3)
        assert optimum / 10 < tol.epsilon <= optimum
        assert tol.epsilon == pytest.approx(0.25 * (2 * UNIT_ROUNDOFF[dtype]) ** (1 / 3))
