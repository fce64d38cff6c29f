"""The runner on small specs: verdicts, figures, contract attribution, no exceptions out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from specgrad.backends import backend as get_backend
from specgrad.compile import compile_spec
from specgrad.results import CheckResult, Status
from specgrad.runner import describe_exception, run_spec
from specgrad.validate import parse_spec

NP = get_backend("cpu")


def run(tmp_path: Path, source: str, **doc: Any) -> dict[str, CheckResult]:
    module = f"runner_mod_{abs(hash(source)) % 10**9}"
    (tmp_path / f"{module}.py").write_text("import numpy as np\n" + source)
    spec_doc = {
        "specgrad": 1,
        "name": "t",
        "description": "d",
        "forward": f"{module}:forward",
        "backward": f"{module}:backward",
        "inputs": {"x": {"shape": [3, 4]}},
        "dtypes": ["float64"],
        "cases": ["random"],
        **doc,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    spec = parse_spec(path)
    results = list(run_spec(spec, compile_spec(spec)))
    sys.modules.pop(module, None)
    return {r.target: r for r in results}


SQUARE = "def forward(x):\n    return x * x\ndef backward(g, x):\n    return 2 * g * x\n"


def test_correct_gradient_passes_with_figures(tmp_path: Path) -> None:
    r = run(tmp_path, SQUARE)
    assert {t: v.status for t, v in r.items()} == {
        "x": Status.PASS,
        "contract.forward_output": Status.PASS,
        "contract.deterministic": Status.PASS,
        "contract.backward_grads": Status.PASS,
        "contract.backward_deterministic": Status.PASS,
        "contract.zero_upstream": Status.PASS,
        "contract.layout": Status.PASS,
        "contract.finite": Status.PASS,
        "contract.no_mutation": Status.PASS,
        "contract.taylor": Status.PASS,
    }
    c = r["x"].comparison
    assert c is not None and c.size == 12 and c.violations == 0 and c.max_abs_err < 1e-8
    assert r["x"].check_id == "t[float64,random]::x" and r["x"].tolerance is not None


def test_wrong_gradient_fails_with_worst_element(tmp_path: Path) -> None:
    src = SQUARE.replace("return 2 * g * x", "d = 2 * g * x\n    d[1, 2] += 1.0\n    return d")
    r = run(tmp_path, src)
    assert r["x"].status is Status.FAIL
    c = r["x"].comparison
    assert c is not None and c.violations == 1 and c.worst_index == (1, 2)
    assert "worst x[1, 2]" in r["x"].message and "1 of 12 elements" in r["x"].message
    assert r["contract.backward_grads"].status is Status.PASS


CENTER = (
    "def forward(x):\n    x = x.astype(DTYPE)\n"
    "    return x - x.mean(axis=1, keepdims=True) + np.asarray(30, x.dtype)\n"
    "def backward(g, x):\n    return SCALE * (g - g.mean(axis=1, keepdims=True))\n"
)


@pytest.mark.parametrize("scale, status", [(1, Status.PASS), (2, Status.FAIL)])
def test_float32_only_layer_noise_not_atol(tmp_path: Path, scale: int, status: Status) -> None:
    """A layer that computes in float32 whatever it is given has no float64 oracle. Every
    input moves 512 outputs of magnitude ~30: their float32 rounding makes errors of ~1e-2
    in the numerical gradient, ten times atol. The per-element noise estimate, not a widened
    atol, absorbs them, and a gradient off by a factor 2 still fails."""
    source = f"SCALE = {scale}\nDTYPE = np.float32\n" + CENTER
    r = run(tmp_path, source, dtypes=["float32"], inputs={"x": {"shape": [2, 512]}})
    assert r["x"].status is status, r["x"].message
    assert r["x"].numerical_dtype == "float32"
    assert "forward resolves changes of x only to float32 precision" in r["x"].note
    c = r["x"].comparison
    assert c is not None and 1e-3 < c.noise_floor < 0.5
    if status is Status.PASS:
        assert c.max_abs_err > 2e-3  # beyond atol + rtol*|n| for the smallest gradients


@pytest.mark.parametrize("scale, status", [(1, Status.PASS), (2, Status.FAIL)])
def test_float32_check_uses_the_float64_oracle(tmp_path: Path, scale: int, status: Status) -> None:
    """The same layer computing in its input's dtype: the numerical gradient comes from a
    float64 run on the same values, so its noise is negligible and the errors left are the
    float32 backward's own."""
    source = f"SCALE = {scale}\nDTYPE = None\n" + CENTER.replace("x.astype(DTYPE)", "x")
    r = run(tmp_path, source, dtypes=["float32"], inputs={"x": {"shape": [2, 512]}})
    assert r["x"].status is status, r["x"].message
    assert r["x"].numerical_dtype == "float64" and r["x"].note == ""
    c = r["x"].comparison
    assert c is not None and c.noise_floor < 1e-5  # ~1e-2 when computed in float32
    if status is Status.PASS:
        assert c.max_abs_err < 1e-5


def test_tiny_gradients_are_not_below_the_radar(tmp_path: Path) -> None:
    """A mean over 16384 elements has gradients ~1e-4, all below the float32 atol of 1e-3;
    with a float64 oracle the default atol scales down with them, so a missing factor 2
    fails while the correct backward passes."""
    src = (
        "def forward(x):\n    return (x * x).mean()\n"
        "def backward(g, x):\n    return FACTOR * x * g / x.size\n"
    )
    ok = run(
        tmp_path,
        "FACTOR = 2\n" + src,
        dtypes=["float32"],
        inputs={"x": {"shape": [128, 128]}},
        cases=["random"],
    )
    bad = run(
        tmp_path,
        "FACTOR = 1\n" + src,
        dtypes=["float32"],
        inputs={"x": {"shape": [128, 128]}},
        cases=["random"],
    )
    assert ok["x"].status is Status.PASS, ok["x"].message
    assert bad["x"].status is Status.FAIL, bad["x"].message
    c = bad["x"].comparison
    assert c is not None and c.max_abs_numerical < 1e-3 and c.violations > 0.9 * c.size


def test_forward_raising_errors_every_check(tmp_path: Path) -> None:
    r = run(tmp_path, "def forward(x):\n    raise ValueError('no')\ndef backward(g, x):\n    return g\n")
    assert all(v.status is Status.ERROR for v in r.values())
    assert "forward raised ValueError: no" in r["x"].message and "in forward" in r["x"].message


def test_forward_raising_only_when_perturbed(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    if x[0, 1] > 5:\n        raise ValueError('domain')\n    return x * 1\n"
        "def backward(g, x):\n    return g\n"
    )
    r = run(tmp_path, src, inputs={"x": {"shape": [3, 4], "fill": {"kind": "constant", "value": 5.0}}})
    assert r["x"].status is Status.ERROR and r["x"].message.startswith("perturbing x[0, 1]: forward raised")
    assert r["contract.finite"].status is Status.PASS


def test_backward_raising_is_attributed_to_backward(tmp_path: Path) -> None:
    r = run(tmp_path, "def forward(x):\n    return x * 1\ndef backward(g, x):\n    return 1 / 0\n")
    assert r["contract.backward_grads"].status is Status.FAIL
    # forward ran and was fine: its contracts keep their verdicts
    assert r["contract.forward_output"].status is Status.PASS
    assert r["contract.deterministic"].status is Status.PASS
    assert r["contract.finite"].status is Status.ERROR
    assert "backward raised ZeroDivisionError" in r["x"].message


def test_mutating_forward_blocks_gradients_and_is_restored(tmp_path: Path) -> None:
    r = run(tmp_path, "def forward(x):\n    x += 1\n    return x * 1\ndef backward(g, x):\n    return g\n")
    assert r["contract.no_mutation"].status is Status.FAIL
    assert "forward modified x" in r["contract.no_mutation"].message
    assert r["x"].status is Status.ERROR and "modifies its input" in r["x"].message


def test_nondeterministic_forward(tmp_path: Path) -> None:
    src = (
        "_n = [0]\ndef forward(x):\n    _n[0] += 1\n    return x * _n[0]\ndef backward(g, x):\n    return g\n"
    )
    r = run(tmp_path, src)
    assert r["contract.deterministic"].status is Status.FAIL and r["x"].status is Status.ERROR


def test_multi_output_forward_with_integer_output(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    return x * 2, np.argmax(x, axis=1), x.sum()\n"
        "def backward(g, x):\n    g0, g1, g2 = g\n    assert g1 is None\n    return 2 * g0 + g2\n"
    )
    r = run(tmp_path, src)
    assert r["x"].status is Status.PASS, r["x"].message


def test_scalar_loss_returning_numpy_scalar(tmp_path: Path) -> None:
    src = "def forward(x):\n    return (x ** 2).mean()\ndef backward(g, x):\n    return 2 * x * g / x.size\n"
    assert run(tmp_path, src)["x"].status is Status.PASS


def test_nan_in_gradient(tmp_path: Path) -> None:
    src = (
        "def forward(x):\n    return x * 1\n"
        "def backward(g, x):\n    d = g.copy()\n    d[0, 0] = np.nan\n    return d\n"
    )
    r = run(tmp_path, src)
    assert (
        r["contract.finite"].status is Status.FAIL
        and "gradient of x has 1 non-finite" in r["contract.finite"].message
    )
    assert r["x"].status is Status.FAIL and r["x"].comparison is not None
    assert r["x"].comparison.worst_index == (0, 0)


def test_only_selected_targets_run(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    (tmp_path / "sel_mod.py").write_text(SQUARE)
    path.write_text(
        yaml.safe_dump(
            {
                "specgrad": 1,
                "name": "t",
                "description": "d",
                "forward": "sel_mod:forward",
                "backward": "sel_mod:backward",
                "inputs": {"x": {"shape": [2]}},
            }
        )
    )
    spec = parse_spec(path)
    from specgrad.select import compile_expression

    plans = compile_spec(spec, select=compile_expression("finite and float32"))
    assert [r.check_id for r in run_spec(spec, plans)] == [
        "t[float32,random]::contract.finite",
        "t[float32,wide]::contract.finite",
        "t[float32,special]::contract.finite",
    ]


def test_describe_exception_shows_user_frames_only() -> None:
    def user_code() -> None:
        raise KeyError("k")

    try:
        user_code()
    except KeyError as exc:
        text = describe_exception("backward", exc)
    assert text.startswith("backward raised KeyError: 'k'")
    assert "in user_code" in text and "specgrad/runner.py" not in text


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_every_float_dtype_runs(tmp_path: Path, dtype: str) -> None:
    r = run(tmp_path, SQUARE, dtypes=[dtype])
    assert r["x"].status is Status.PASS and r["x"].dtype == dtype
