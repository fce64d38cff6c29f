"""What the verdict depends on in low precision and at awkward points: the float64 oracle
and its refusals, layers computing in less precision than their arrays, gradients that are
truly zero or tiny, curvature near a domain edge, and what the contracts see."""

from __future__ import annotations

from pathlib import Path

import pytest

from specgrad.results import Status
from tests.unit.test_runner import run

LINEAR_BN = """
def _bn(y):
    mu = y.mean(axis=0)
    var = ((y - mu) ** 2).mean(axis=0)
    return (y - mu) / np.sqrt(var + 1e-5), var
def forward(x, w, b):
    return _bn(x @ w.T + b)[0]
def backward(g, x, w, b):
    y = x @ w.T + b
    yh, var = _bn(y)
    n = y.shape[0]
    dy = (g - g.mean(axis=0) - yh * (g * yh).mean(axis=0)) / np.sqrt(var + 1e-5)
    return dy @ w, dy.T @ x, dy.sum(axis=0)
"""


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_a_truly_zero_gradient_passes(tmp_path: Path, dtype: str) -> None:
    """A bias before a batch norm has a gradient of exactly zero; the low-precision backward
    leaves rounding in it, which the bound must allow for (the case's scale, not b's)."""
    r = run(
        tmp_path,
        LINEAR_BN,
        dtypes=[dtype],
        cases=["random"],
        inputs={"x": {"shape": [16, 6]}},
        parameters={"w": {"shape": [5, 6]}, "b": {"shape": [5]}},
    )
    assert {t: v.status for t, v in r.items() if not t.startswith("contract")} == {
        "x": Status.PASS,
        "w": Status.PASS,
        "b": Status.PASS,
    }, [v.message for v in r.values()]


MIXED = """
def forward(x, w):
    return (x.astype(np.float32) @ w.astype(np.float32).T).astype(x.dtype)
def backward(g, x, w):
    return (g @ w).astype(x.dtype) * SCALE, (g.T @ x).astype(w.dtype)
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale, status", [(1, Status.PASS), (2, Status.FAIL)])
def test_layer_computing_in_float32_inside(tmp_path: Path, dtype: str, scale: int, status: Status) -> None:
    """Its arrays say float64 (or the oracle's float64), its arithmetic is float32: a 1e-6
    step would measure rounding. The probes find float32 resolution and use its step."""
    r = run(
        tmp_path,
        f"SCALE = {scale}\n" + MIXED,
        dtypes=[dtype],
        cases=["random"],
        inputs={"x": {"shape": [4, 64]}},
        parameters={"w": {"shape": [8, 64]}},
    )
    assert r["x"].status is status, r["x"].message
    assert r["w"].status is Status.PASS, r["w"].message
    assert r["x"].numerical_dtype == "float32"
    assert "forward resolves changes of x only to float32 precision" in r["x"].note


def test_layer_branching_on_dtype_gets_no_oracle(tmp_path: Path) -> None:
    """float64 runs a different slope than float32: checking the float32 backward against
    the float64 function would pass a backward that is wrong for the code that runs."""
    src = (
        "def forward(x):\n    a = 0.01 if x.dtype == np.float64 else 0.2\n    return np.where(x > 0, x, a * x)\n"
        "def backward(g, x):\n    return np.where(x > 0, g, 0.01 * g)\n"
    )
    r = run(tmp_path, src, dtypes=["float32"], cases=["random"], inputs={"x": {"shape": [64]}})
    assert r["x"].status is Status.FAIL
    assert "give different results" in r["x"].note and r["x"].numerical_dtype == "float32"


@pytest.mark.parametrize("seed", [0, 4, 6])
@pytest.mark.parametrize("backward, status", [("g / x", Status.PASS), ("g / (x + 1e-3)", Status.FAIL)])
def test_log_near_zero_is_not_a_false_alarm(tmp_path: Path, seed: int, backward: str, status: Status) -> None:
    """log on (0, 1): where x is ~1e-4 the plain difference's truncation (h^2 / 3x^2) exceeds
    rtol; those few elements are re-estimated by Richardson extrapolation. A wrong backward
    still fails everywhere."""
    src = f"def forward(x):\n    return np.log(x)\ndef backward(g, x):\n    return {backward}\n"
    fill = {"kind": "uniform", "low": 0.0, "high": 1.0}
    r = run(
        tmp_path,
        src,
        dtypes=["float64"],
        cases=["random"],
        seed=seed,
        inputs={"x": {"shape": [4096], "fill": fill}},
    )
    assert r["x"].status is status, r["x"].message


REFUSE = """
def forward(x):
    if x.dtype == np.float64:
        raise TypeError("no float64 kernel")
    return (SCALE * (x * x).mean()).reshape(1)
def backward(g, x):
    return (SCALE * FACTOR * x * g / x.size).astype(x.dtype)
"""


@pytest.mark.parametrize(
    "factor, scale, status",
    [
        (2, 1.0, Status.PASS),
        (6, 1.0, Status.FAIL),  # gradients up to ~6e-3: conclusive
        (2, 0.05, Status.ERROR),
        (6, 0.05, Status.ERROR),  # all below the float32 atol of 1e-3
    ],
)
def test_without_oracle_tiny_gradients_are_inconclusive_not_passed(
    tmp_path: Path, factor: int, scale: float, status: Status
) -> None:
    """No float64 oracle: where the gradients reach past atol a 3x error fails; where all of
    them are inside atol, right or wrong cannot be told apart, and the check says so."""
    r = run(
        tmp_path,
        f"FACTOR = {factor}\nSCALE = {scale}\n" + REFUSE,
        dtypes=["float32"],
        cases=["random"],
        inputs={"x": {"shape": [4096]}},
    )
    assert r["x"].status is status, r["x"].message
    if status is Status.ERROR:
        assert r["x"].message.startswith("inconclusive: every gradient")
    assert "not from the float64 oracle: forward on float64 inputs raised TypeError" in r["x"].note


def test_float16_cancellation_is_inconclusive_not_failed(tmp_path: Path) -> None:
    """A saturated float16 softmax: the backward's rounding (~u |g|) is larger than the true
    gradients themselves; that is float16, not a bug, and not evidence either way."""
    src = (
        "def forward(x):\n    e = np.exp(x - x.max(axis=1, keepdims=True))\n    return e / e.sum(axis=1, keepdims=True)\n"
        "def backward(g, x):\n    s = forward(x)\n    return s * (g - (g * s).sum(axis=1, keepdims=True))\n"
    )
    r = run(
        tmp_path,
        src,
        dtypes=["float16"],
        cases=["random"],
        inputs={"x": {"shape": [64, 2], "fill": {"kind": "special", "values": [8.0, 0.0]}}},
    )
    assert r["x"].status in (Status.ERROR, Status.PASS), r["x"].message
    if r["x"].status is Status.ERROR:
        assert r["x"].message.startswith("inconclusive: every gradient of this case is within the bound")


def test_backward_mutating_grad_out_is_a_contract_failure(tmp_path: Path) -> None:
    src = "def forward(x):\n    return x * 1\ndef backward(g, x):\n    g[x <= 0] = 0\n    return g\n"
    r = run(tmp_path, src, cases=["random"])
    assert r["contract.no_mutation"].status is Status.FAIL
    assert "upstream gradient (grad_out) in place" in r["contract.no_mutation"].message


def test_complex_output_is_a_contract_failure(tmp_path: Path) -> None:
    src = "def forward(x):\n    return x * 1j\ndef backward(g, x):\n    return g\n"
    r = run(tmp_path, src, cases=["random"])
    assert r["contract.forward_output"].status is Status.FAIL
    assert "complex128" in r["contract.forward_output"].message


def test_generator_backward_runs_inside_the_user_call(tmp_path: Path) -> None:
    src = "def forward(x):\n    return x * 1\ndef backward(g, x):\n    yield g.reshape(99)\n"
    r = run(tmp_path, src, cases=["random"])
    assert r["x"].status is Status.ERROR and "backward raised ValueError" in r["x"].message


def test_framework_tensor_output_is_named_not_a_crash(tmp_path: Path) -> None:
    src = (
        "class T:\n    def __init__(self, a):\n        self.a, self.shape, self.dtype = a, a.shape, a.dtype\n"
        "def forward(x):\n    return T(x)\ndef backward(g, x):\n    return g\n"
    )
    r = run(tmp_path, src, cases=["random"])
    assert r["contract.forward_output"].status is Status.FAIL
    assert "output 0 is a T, not a numpy array (convert it" in r["contract.forward_output"].message


def test_gradient_viewing_a_reused_buffer_is_kept_as_returned(tmp_path: Path) -> None:
    """A backward returning a view of a workspace that every forward overwrites: the
    analytical gradient is the one backward returned, not what the buffer holds later."""
    src = (
        "_ws = {}\n"
        "def forward(x):\n    buf = _ws.setdefault(x.dtype.str, np.empty_like(x))\n"
        "    buf[...] = x * x\n    return buf.copy()\n"
        "def backward(g, x):\n    buf = _ws[x.dtype.str]\n    buf[...] = 2 * x * g\n    return buf\n"
    )
    r = run(tmp_path, src, cases=["random"])
    assert r["x"].status is Status.PASS, r["x"].message


def test_saturated_layer_is_insensitive_not_imprecise(tmp_path: Path) -> None:
    """A saturated tanh barely moves its output for a 1e-10 change of most inputs: that is
    low sensitivity, not low precision, and the float64 step and bounds stay."""
    src = (
        "def forward(x, w):\n    return np.tanh(x @ w)\n"
        "def backward(g, x, w):\n    d = g * (1 - np.tanh(x @ w) ** 2)\n    return d @ w.T, x.T @ d\n"
    )
    r = run(
        tmp_path,
        src,
        cases=["random"],
        inputs={"x": {"shape": [3, 8], "fill": {"kind": "normal", "std": 10.0}}},
        parameters={"w": {"shape": [8, 16], "fill": {"kind": "normal", "std": 10.0}}},
    )
    for name in ("x", "w"):
        assert r[name].status is Status.PASS, r[name].message
        assert r[name].numerical_dtype == "float64" and r[name].note == ""


OFF_BY_1_PERCENT = "def forward(x):\n    return x * x\ndef backward(g, x):\n    return 2.02 * g * x\n"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_error_model_bound_sits_at_the_precision_and_reports_its_margin(tmp_path: Path, dtype: str) -> None:
    """A 1% error is thousands of times the model's bound in float32 and float64; a hand-set
    rtol with its reason replaces the model (and lets it through: that is what it says)."""
    wrong = run(tmp_path, OFF_BY_1_PERCENT, dtypes=[dtype])["x"]
    assert wrong.status is Status.FAIL and wrong.comparison is not None
    assert wrong.comparison.worst_ratio > 1000 and wrong.comparison.margin < 1e-3
    assert "error model" in wrong.message
    loose = {dtype: {"rtol": 0.05, "reason": "the layer is approximate by design"}}
    allowed = run(tmp_path, OFF_BY_1_PERCENT, dtypes=[dtype], tolerances=loose)["x"]
    assert allowed.status is Status.PASS and allowed.tolerance is not None and allowed.tolerance.hand_set
    right = run(tmp_path, OFF_BY_1_PERCENT.replace("2.02", "2"), dtypes=[dtype])["x"]
    assert right.status is Status.PASS and right.comparison is not None
    assert right.to_dict()["figures"]["margin"] > 1


def test_float16_attention_with_saturated_scores_is_not_a_false_alarm(tmp_path: Path) -> None:
    """Scores of std ~16 in float16: the backward's rounding is amplified by the softmax
    and absorbed in its sums far beyond what the inputs' magnitudes show; the rounding
    measured against the same backward in float64 covers what the model's terms do not
    (without it, this case fails)."""
    import specgrad.gradient_check as gc

    src = (
        "from specgrad.zoo import attention\n"
        "def forward(k, q, v):\n    return attention.forward(k, q, v, causal=True)\n"
        "def backward(g, k, q, v):\n    return attention.backward(g, k, q, v, causal=True)\n"
    )
    inputs = {"k": {"shape": [2, 4, 8]}, "q": {"shape": [2, 4, 8]}, "v": {"shape": [2, 4, 5]}}
    r = run(tmp_path, src, dtypes=["float16"], inputs=inputs, cases=["wide"], seed=14)
    assert all(r[n].status is Status.PASS for n in "kqv"), [r[n].message for n in "kqv"]
    saved = gc.MEASURED_SIGMAS
    try:
        gc.MEASURED_SIGMAS = 0.0
        without = run(tmp_path, src, dtypes=["float16"], inputs=inputs, cases=["wide"], seed=14)
    finally:
        gc.MEASURED_SIGMAS = saved
    assert any(without[n].status is Status.FAIL for n in "kq")


def test_a_backward_wrong_only_in_low_precision_is_still_caught(tmp_path: Path) -> None:
    """The measured rounding (low precision vs float64 backward) is capped at sqrt(u) S, so
    a bug in the float32 path alone cannot hide behind it."""
    src = (
        "def forward(x):\n    return x * x\n"
        "def backward(g, x):\n    return 2 * g * x * (1.01 if x.dtype == np.float32 else 1.0)\n"
    )
    r = run(tmp_path, src, dtypes=["float32", "float64"])
    assert r["x"].status is Status.PASS  # the float64 check, the last one of the run
    assert run(tmp_path, src, dtypes=["float32"])["x"].status is Status.FAIL


def test_a_partly_float32_path_is_found(tmp_path: Path) -> None:
    """x + tanh(float32(x)): every element still moves at a float64 probe (through x), but
    by the wrong amount; the probes compare each change with the next coarser one's."""
    src = (
        "def forward(x):\n    return x + np.tanh(x.astype(np.float32)).astype(x.dtype)\n"
        "def backward(g, x):\n    return g * (2 - np.tanh(x) ** 2)\n"
    )
    r = run(tmp_path, src, inputs={"x": {"shape": [4, 8]}}, cases=["random", "special"])
    assert r["x"].status is Status.PASS and r["x"].numerical_dtype == "float32", r["x"].message


def test_a_layer_half_a_percent_different_in_float64_gets_no_oracle(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    return x * (1.005 if x.dtype == np.float64 else 1.0)\n"
        "def backward(g, x):\n    return g * 1.0\n"
    )
    r = run(tmp_path, src, dtypes=["float32"])
    assert r["x"].status is Status.PASS and "does the layer branch on the dtype?" in r["x"].note


def test_tiny_inputs_are_probed_in_their_linear_regime(tmp_path: Path) -> None:
    """A layer norm of values near 1e-3: probes relative to |x| + 1 moved them by 3e-3,
    out of the linear regime, and the check fell to float16 steps (found in review)."""
    from tests.unit.test_runner import run

    source = (
        "from specgrad.zoo import norm\n"
        "def forward(x, g, b):\n    return norm.layernorm_forward(x, g, b, 1e-12)\n"
        "def backward(go, x, g, b):\n    return norm.layernorm_backward(go, x, g, b, 1e-12)\n"
    )
    r = run(
        tmp_path,
        source,
        inputs={"x": {"shape": [16, 64], "fill": {"kind": "normal", "std": 1e-3}}},
        parameters={
            "g": {"shape": [64], "fill": {"kind": "uniform", "low": 0.5, "high": 1.5}},
            "b": {"shape": [64]},
        },
        dtypes=["float32", "float64"],
    )
    assert all(r[t].status is Status.PASS for t in ("x", "g", "b")), r["x"].message
    assert r["x"].numerical_dtype == "float64"
