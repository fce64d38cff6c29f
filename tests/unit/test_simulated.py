"""The simulated device refuses what cupy refuses, counts transfers, and otherwise computes
exactly what numpy computes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from specgrad import simulated
from specgrad.simulated import SimArray, xp


def test_implicit_conversion_to_numpy_is_refused() -> None:
    a = xp.asarray(np.ones(3))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.float64(a)  # numpy reads the array through __array__


@pytest.mark.parametrize(
    "mix",
    [
        lambda d, h: d + h,
        lambda d, h: h * d,
        lambda d, h: xp.where(d > 0, h, d),
        lambda d, h: np.maximum(d, h),
        lambda d, h: xp.stack([d, h]),
        lambda d, h: d.__setitem__(slice(None), h),
    ],
)
def test_mixing_host_and_device_arrays_is_refused(mix: object) -> None:
    d, h = xp.asarray(np.ones(3)), np.ones(3)
    with pytest.raises(TypeError, match="host numpy array cannot be mixed with device arrays"):
        mix(d, h)  # type: ignore[operator]


def test_numpy_only_functions_and_members_are_missing() -> None:
    with pytest.raises(AttributeError, match="errstate"):
        xp.errstate  # noqa: B018
    a = xp.asarray(np.ones(3))
    with pytest.raises(TypeError, match=r"numpy\.insert is not available for device arrays"):
        np.insert(a, 0, 1.0)
    with pytest.raises(AttributeError, match="setflags"):
        a.setflags(write=False)


def test_reductions_return_device_scalars_and_reading_them_is_a_transfer() -> None:
    a = xp.asarray(np.arange(4.0))
    simulated.TRANSFERS.clear()
    total = xp.sum(a)
    assert isinstance(total, SimArray) and total.shape == ()
    assert isinstance(np.max(a), SimArray)  # numpy's functions dispatch to the device's
    assert float(total) == 6.0 and int(a.argmax()) == 3 and bool(total > 5)
    assert a.tolist() == [0.0, 1.0, 2.0, 3.0] and f"{total:.1f}" == "6.0"
    assert simulated.TRANSFERS["to_host"] == 5 and simulated.TRANSFERS["to_device"] == 0
    xp.asarray(np.zeros(2))
    assert simulated.TRANSFERS["to_device"] == 1


def test_views_ufunc_methods_and_indexing_behave_as_on_a_device() -> None:
    a = xp.zeros((2, 3))
    flat = a.reshape(-1)
    flat[4] = 5.0  # a view: writes through
    assert float(a[1, 1]) == 5.0
    xp.add.at(flat, xp.asarray(np.array([0, 0, 2])), 1.0)
    assert a.get().tolist() == [[2.0, 0.0, 1.0], [0.0, 5.0, 0.0]]
    assert a[np.array([1])].shape == (1, 3)  # host index arrays are copied over, as cupy does
    b = a
    b += 1.0
    assert b is a and float(a[0, 1]) == 1.0
    assert tuple(int(i) for i in xp.unravel_index(xp.asarray(4), (2, 3))) == (1, 1)
    with pytest.raises(TypeError, match="takes a device array of indices"):
        xp.unravel_index(4, (2, 3))  # cupy's fails on a Python int
    assert xp.asnumpy(a).dtype == np.float64 and isinstance(xp.asnumpy(a), np.ndarray)


def test_dlpack_round_trip() -> None:
    a = xp.asarray(np.arange(3.0))
    b = xp.from_dlpack(a)
    assert isinstance(b, SimArray) and b.get().tolist() == [0.0, 1.0, 2.0]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64, np.int32]),
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
        elements={"allow_nan": False, "allow_infinity": False, "min_value": -100, "max_value": 100},
    ),
    st.sampled_from(["exp", "tanh", "sum", "cumsum", "abs", "square", "sort", "max", "transpose"]),
)
def test_results_are_numpys_bit_for_bit(host: np.ndarray, op: str) -> None:
    with np.errstate(all="ignore"):
        expected = np.asarray(getattr(np, op)(host))
        got = getattr(xp, op)(xp.asarray(host))
    assert isinstance(got, SimArray)
    np.testing.assert_array_equal(got.get(), expected, strict=True)


def test_what_cupy_has_works_on_the_device_too() -> None:
    """No false alarms: cupy's generators draw on the device, and it stacks a nested
    sequence of device arrays."""
    a = xp.asarray(np.ones((2, 3)))
    assert isinstance(xp.random.default_rng(0).random((2, 3)), SimArray)
    assert isinstance(xp.random.RandomState(0).rand(2), SimArray)
    assert isinstance(xp.random.normal(size=2), SimArray)
    stacked = xp.array([a[0] * 2, a[1] * 3])
    assert isinstance(stacked, SimArray) and stacked.get().tolist() == [[2.0] * 3, [3.0] * 3]
    assert xp.asarray([a.sum(), a.sum()]).get().tolist() == [6.0, 6.0]


def test_ufuncs_cupy_lacks_are_refused() -> None:
    a = xp.asarray(np.ones(3))
    with pytest.raises(TypeError, match="ufunc 'spacing' is not available for device arrays"):
        np.spacing(a)
    assert isinstance(np.exp(a), SimArray)  # those cupy has dispatch to the device
