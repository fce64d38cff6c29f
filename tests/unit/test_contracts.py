"""The contracts that take calls of their own: each catches its kind of bug, passes the
correct layer, and can be switched off per spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specgrad.results import Status
from tests.unit.test_runner import SQUARE, run

NONDET_BACKWARD = """
_calls = [0]
def forward(x):
    return x * x
def backward(g, x):
    _calls[0] += 1
    return 2 * g * x * (1 + 1e-9 * _calls[0])
"""

DECAY_IN_BACKWARD = """
def forward(x, w):
    return x @ w
def backward(g, x, w):
    return g @ w.T, x.T @ g + 1e-4 * w
"""

# reads its input through C strides it assumes, as a raw-pointer kernel would
ASSUMES_C_ORDER = """
from numpy.lib.stride_tricks import as_strided
def _c(x):
    return as_strided(x, x.shape, (x.itemsize * x.shape[1], x.itemsize))
def forward(x):
    return _c(x) * 2
def backward(g, x):
    return 2 * g
"""


def test_correct_layer_passes_every_probed_contract(tmp_path: Path) -> None:
    r = run(tmp_path, SQUARE, cases=["random", "special"])
    for kind in ("backward_deterministic", "zero_upstream", "layout"):
        assert r[f"contract.{kind}"].status is Status.PASS


def test_backward_twice_must_agree_unless_nondet_tol_allows(tmp_path: Path) -> None:
    r = run(tmp_path, NONDET_BACKWARD)
    c = r["contract.backward_deterministic"]
    assert c.status is Status.FAIL and "gave different gradients for x" in c.message
    assert "bitwise" in c.message
    r = run(tmp_path, NONDET_BACKWARD, nondet_tol=1e-6)
    assert r["contract.backward_deterministic"].status is Status.PASS
    assert r["x"].status is Status.PASS


def test_zero_upstream_gradient_gives_zero_gradients(tmp_path: Path) -> None:
    r = run(tmp_path, DECAY_IN_BACKWARD, inputs={"x": {"shape": [3, 4]}, "w": {"shape": [4, 2]}})
    c = r["contract.zero_upstream"]
    assert c.status is Status.FAIL and "nonzero gradients for w (largest" in c.message


def test_layout_catches_code_that_assumes_contiguous_memory(tmp_path: Path) -> None:
    r = run(tmp_path, ASSUMES_C_ORDER)
    c = r["contract.layout"]
    assert c.status is Status.FAIL and "output 0" in c.message and "C-contiguous" in c.message
    assert r["x"].status is Status.PASS  # on contiguous inputs the layer is right


# flattens in memory order: right for C-ordered arrays, scrambled for Fortran-ordered ones
MEMORY_ORDER = """
def forward(x):
    return x.ravel(order="K").reshape(x.shape) * 2
def backward(g, x):
    return 2 * g
"""


def test_layout_catches_code_that_depends_on_memory_order(tmp_path: Path) -> None:
    c = run(tmp_path, MEMORY_ORDER)["contract.layout"]
    assert c.status is Status.FAIL and c.message.startswith("Fortran-ordered (transposed memory) inputs")


def test_contracts_can_be_switched_off(tmp_path: Path) -> None:
    r = run(tmp_path, ASSUMES_C_ORDER, contracts={"layout": False, "zero_upstream": False})
    assert "contract.layout" not in r and "contract.zero_upstream" not in r
    assert r["contract.backward_deterministic"].status is Status.PASS


def test_layout_keeps_scalar_shapes(tmp_path: Path) -> None:
    r = run(tmp_path, SQUARE, inputs={"x": {"shape": []}}, cases=["random", "special"])
    assert r["contract.layout"].status is Status.PASS, r["contract.layout"].message


def test_zero_upstream_names_an_overflow_not_a_regulariser(tmp_path: Path) -> None:
    src = "def forward(x):\n    return x * 1\ndef backward(g, x):\n    return g * (x * np.inf)\n"
    with np.errstate(invalid="ignore"):
        c = run(tmp_path, src)["contract.zero_upstream"]
    assert c.status is Status.FAIL and "non-finite gradients" in c.message and "0 * inf" in c.message
