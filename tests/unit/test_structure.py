"""Jacobian structure: colouring, detection, colored differences and their cross-checks."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.errors import SpecError
from specgrad.model import Link
from specgrad.numerics.colored import StructureViolation, colored_difference, footprints
from specgrad.numerics.finite_diff import central_difference
from specgrad.results import Status
from specgrad.structure import StructureMismatch, center, coloring, detect, elementwise
from specgrad.validate import parse_spec
from specgrad.zoo import activations, conv, linear, norm, softmax
from tests.unit.test_runner import run

# -- colouring ----------------------------------------------------------------------------


@st.composite
def linked_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[Link, ...], tuple[int, ...]]:
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    out = []
    links = []
    for a, n in enumerate(shape):
        if draw(st.booleans()):
            n_out = draw(st.integers(1, 2 * n))
            lo, hi = draw(st.integers(-2, 0)), draw(st.integers(0, 2))
            links.append(Link(a, a, lo, hi))
            out.append(n_out)
        else:
            out.append(draw(st.integers(1, 5)))
    return shape, tuple(links), tuple(out)


@settings(max_examples=150, deadline=None)
@given(linked_shapes())
def test_groups_partition_the_elements_and_own_each_output_once(
    case: tuple[tuple[int, ...], tuple[Link, ...], tuple[int, ...]],
) -> None:
    shape, links, out_shape = case
    c = coloring(shape, links, [out_shape], "declared")
    seen: list[int] = []
    groups = list(c.groups())
    assert len(groups) == c.size
    for group in groups:
        seen += group.elements.tolist()
        boxes = []
        for e in group.elements.tolist():
            idx = np.unravel_index(e, shape)
            box = {}
            for link in links:
                mid = int(center(np.array(idx[link.axis]), shape[link.axis], out_shape[link.out_axis]))
                box[link.out_axis] = (mid + link.lo, mid + link.hi)
            boxes.append(box)
        owner = group.owners[0].reshape(out_shape)
        for o in itertools.product(*[range(n) for n in out_shape]):
            holders = [
                t for t, box in enumerate(boxes) if all(lo <= o[d] <= hi for d, (lo, hi) in box.items())
            ]
            assert len(holders) <= 1, "boxes of one group overlap"
            assert int(owner[o]) == (holders[0] if holders else -1)
    assert sorted(seen) == list(range(int(np.prod(shape))))


def test_a_link_that_does_not_fit_the_outputs_is_a_mismatch() -> None:
    with pytest.raises(StructureMismatch, match="output_axis 3 does not exist"):
        coloring((4, 4), (Link(0, 3),), [(4, 4)], "declared")
    with pytest.raises(StructureMismatch, match="linked once"):
        coloring((4, 4), (Link(0, 0), Link(1, 0)), [(4, 4)], "declared")


def test_periods_are_the_tightest_separation() -> None:
    c = coloring((8, 16, 32, 32), (Link(0, 0), Link(2, 2, -1, 1), Link(3, 3, -1, 1)), [(8, 4, 32, 32)], "d")
    assert c.periods == (1, 3, 3) and c.size == 16 * 9
    strided = coloring((1, 3, 8, 8), (Link(2, 2, 0, 1), Link(3, 3, 0, 1)), [(1, 4, 4, 4)], "d")
    assert strided.periods == (4, 4)


# -- detection ----------------------------------------------------------------------------


def _detected(forward: Any, x: np.ndarray) -> tuple[Link, ...] | None:
    out = forward(x)
    probe = footprints(lambda: (forward(x),), x, [np.ones(out.shape)], 1e-3, np, np.asarray)
    return detect(x.shape, [out.shape], probe, 0)


RNG = np.random.default_rng(0)


def test_detects_the_common_structures() -> None:
    x4 = RNG.normal(size=(4, 5, 12, 12))
    w = RNG.normal(size=(6, 5, 3, 3))
    b = RNG.normal(size=6)
    assert _detected(activations.tanh_forward, RNG.normal(size=(16, 32))) == elementwise((16, 32))
    assert _detected(lambda x: conv.forward(x, w, b, 1, 1), x4) == (
        Link(0, 0),
        Link(2, 2, -1, 1),
        Link(3, 3, -1, 1),
    )
    assert _detected(lambda x: conv.forward(x, w, b, 2, 1), x4) == (
        Link(0, 0),
        Link(2, 2, 0, 1),
        Link(3, 3, 0, 1),
    )
    xl = RNG.normal(size=(8, 20))
    assert _detected(lambda w_: linear.forward(xl, w_, np.zeros(12)), RNG.normal(size=(12, 20))) == (
        Link(0, 1),
    )
    assert _detected(lambda x: softmax.softmax_forward(x), RNG.normal(size=(8, 40))) == (Link(0, 0),)
    gamma, beta = np.ones(5), np.zeros(5)
    assert _detected(lambda x: norm.batchnorm_forward(x, gamma, beta), x4) == (Link(1, 1),)


def test_nothing_is_detected_for_dense_or_tiny_tensors() -> None:
    assert _detected(lambda x: x * np.sum(x), RNG.normal(size=(8, 8))) == ()
    assert _detected(activations.tanh_forward, RNG.normal(size=(2, 3))) is None


# -- colored differences --------------------------------------------------------------------


def test_colored_differences_equal_single_element_ones() -> None:
    x = RNG.normal(size=(2, 3, 9, 9))
    w, b = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=4)
    g = RNG.normal(size=(2, 4, 9, 9))

    def evaluate() -> tuple[Any, ...]:
        return (conv.forward(x, w, b, 1, 1),)

    links = (Link(0, 0), Link(2, 2, -1, 1), Link(3, 3, -1, 1))
    c = coloring(x.shape, links, [g.shape], "declared")
    colored = colored_difference(evaluate, x, [g], c, 1e-4, 2.0**-53, np, verify=range(c.size))
    alone = central_difference(evaluate, x, [g], 1e-4, 2.0**-53, np)
    # the same outputs summed in another order: equal to well within their rounding noise
    assert np.all(np.abs(colored.value - alone.value) <= 0.01 * alone.noise)
    assert np.all(np.abs(colored.plus - alone.plus) <= 0.01 * alone.noise)
    assert np.array_equal(colored.fanout, alone.fanout)
    assert np.allclose(colored.noise, alone.noise, rtol=1e-4)


def test_interference_within_a_group_is_a_violation() -> None:
    """A 3-tap filter declared as a 1-tap one: every element moves its neighbours' outputs."""
    x = RNG.normal(size=(4, 30))
    g = RNG.normal(size=(4, 30))

    def evaluate() -> tuple[Any, ...]:
        return (x + 0.5 * np.roll(x, 1, axis=1),)

    c = coloring(x.shape, elementwise(x.shape), [g.shape], "declared")
    with pytest.raises(StructureViolation, match="changed when only the other elements"):
        colored_difference(evaluate, x, [g], c, 1e-4, 2.0**-53, np, verify=[0])


def test_an_output_outside_every_window_is_a_violation() -> None:
    """x[i] is declared to move y[2i + 1] only (an upsampling by 2), but also moves y[2i + 6]."""
    x = RNG.normal(size=(12,))
    g = RNG.normal(size=(24,))

    def evaluate() -> tuple[Any, ...]:
        y = np.zeros(24)
        y[1::2], y[0::2] = x, 0.5 * np.roll(x, 3)
        return (y,)

    c = coloring(x.shape, (Link(0, 0),), [g.shape], "declared")
    assert c.size == 1  # the windows {2i + 1} leave every even output unowned
    with pytest.raises(StructureViolation, match="no element of the group has that output in its window"):
        colored_difference(evaluate, x, [g], c, 1e-4, 2.0**-53, np)


# -- through the runner ---------------------------------------------------------------------

CIRCULAR = """
def forward(x):
    return 0.5 * np.roll(x, 1, axis=1) + x - 0.3 * np.roll(x, -1, axis=1)
def backward(g, x):
    return 0.5 * np.roll(g, -1, axis=1) + g - 0.3 * np.roll(g, 1, axis=1)
"""

#: the classic border bug: a circular filter whose backward zero-pads instead of wrapping
CIRCULAR_ZERO_PAD_BACKWARD = """
def forward(x):
    return 0.5 * np.roll(x, 1, axis=1) + x - 0.3 * np.roll(x, -1, axis=1)
def backward(g, x):
    d = g.copy()
    d[:, :-1] += 0.5 * g[:, 1:]
    d[:, 1:] -= 0.3 * g[:, :-1]
    return d
"""

ROWS = {"x": {"shape": [6, 32]}}


@pytest.mark.parametrize(
    ("declared", "why"),
    [
        ([{"axis": 0}, {"axis": 1}], "radius too small"),
        ([{"axis": 0}, {"axis": 1, "radius": 1}], "interior right, wraps at the borders"),
        ("elementwise", "elementwise"),
    ],
)
def test_wrong_declarations_are_structure_errors_never_passes(
    tmp_path: Path, declared: Any, why: str
) -> None:
    for source in (CIRCULAR, CIRCULAR_ZERO_PAD_BACKWARD):
        r = run(tmp_path, source, inputs=ROWS, structure={"x": declared})
        assert r["x"].status is Status.ERROR, why
        assert r["x"].message.startswith("structure error: the spec's structure for x is wrong"), why


def test_a_right_declaration_is_used_and_passes(tmp_path: Path) -> None:
    source = CIRCULAR.replace("np.roll(x, 1, axis=1)", "x").replace("np.roll(x, -1, axis=1)", "x")
    source = source.replace("np.roll(g, -1, axis=1)", "g").replace("np.roll(g, 1, axis=1)", "g")
    r = run(tmp_path, source, inputs=ROWS, structure="elementwise")
    assert r["x"].status is Status.PASS and r["x"].method == "colored: 1 group, structure declared: " + (
        "axis 0->0, axis 1->1"
    )


def test_detected_structure_that_fails_its_cross_check_falls_back(tmp_path: Path) -> None:
    """Probes in the middle see a 3-tap window; the wrap at the borders breaks it."""
    right = run(tmp_path, CIRCULAR, inputs=ROWS)
    assert right["x"].status is Status.PASS
    assert right["x"].method.startswith("elementwise (the detected structure failed its cross-check")
    wrong = run(tmp_path, CIRCULAR_ZERO_PAD_BACKWARD, inputs=ROWS)
    assert wrong["x"].status is Status.FAIL and "x[0, 31]" in wrong["x"].message


def test_a_coupling_between_two_interior_elements_is_not_hidden(tmp_path: Path) -> None:
    """y[3, 20] also depends on x[1, 7]; a backward that forgets it must fail, however the
    elements are grouped (here the probes see an elementwise layer)."""
    forward = "def forward(x):\n    y = np.tanh(x)\n    y[3, 20] += 0.7 * x[1, 7]\n    return y\n"
    right = forward + (
        "def backward(g, x):\n    d = g * (1 - np.tanh(x) ** 2)\n    d[1, 7] += 0.7 * g[3, 20]\n    return d\n"
    )
    forgot = forward + "def backward(g, x):\n    return g * (1 - np.tanh(x) ** 2)\n"
    assert run(tmp_path, right, inputs=ROWS)["x"].status is Status.PASS
    r = run(tmp_path, forgot, inputs=ROWS)
    assert r["x"].status is Status.FAIL and "x[1, 7]" in r["x"].message


def test_a_declaration_that_does_not_fit_the_outputs_is_a_structure_error(tmp_path: Path) -> None:
    r = run(tmp_path, CIRCULAR, inputs=ROWS, structure={"x": [{"axis": 0, "output_axis": 2}]})
    assert r["x"].status is Status.ERROR and "output_axis 2 does not exist" in r["x"].message


def test_per_element_mode_switches_structure_off(tmp_path: Path) -> None:
    from specgrad.compile import compile_spec
    from specgrad.runner import run_spec

    (tmp_path / "m_tanh.py").write_text(
        "import numpy as np\ndef forward(x):\n    return np.tanh(x)\n"
        "def backward(g, x):\n    return g * (1 - np.tanh(x) ** 2)\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text(
        "specgrad: 1\nname: t\ndescription: d\nforward: m_tanh:forward\nbackward: m_tanh:backward\n"
        "inputs:\n  x: {shape: [8, 16]}\ndtypes: [float64]\ncases: [random]\n"
    )
    spec = parse_spec(path)
    default = {r.target: r for r in run_spec(spec, compile_spec(spec))}
    alone = {r.target: r for r in run_spec(spec, compile_spec(spec, mode="per-element"))}
    assert default["x"].method.startswith("colored") and alone["x"].method == "elementwise"
    assert default["x"].comparison is not None and alone["x"].comparison is not None
    assert default["x"].comparison.worst_ratio == pytest.approx(alone["x"].comparison.worst_ratio, rel=1e-6)


# -- spec validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("structure", "message"),
    [
        ({"y": "dense"}, "structure.y: no tensor named 'y'"),
        ({"x": [{"axis": 2}]}, "x has 2 axes (0 to 1), not axis 2"),
        ({"x": [{"axis": 0}, {"axis": 1, "output_axis": 0}]}, "is linked once"),
        ({"x": [{"axis": 0, "radius": -1}]}, "structure.x"),
        ({"x": "diagonal"}, "structure"),
        ({"x": [{"axis": 0, "window": 2}]}, "window"),
    ],
)
def test_bad_structure_declarations_are_located_spec_errors(
    tmp_path: Path, structure: Any, message: str
) -> None:
    import yaml

    doc = {
        "specgrad": 1,
        "name": "t",
        "description": "d",
        "forward": "m:f",
        "backward": "m:b",
        "inputs": {"x": {"shape": [3, 4]}},
        "structure": structure,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(SpecError) as info:
        parse_spec(path)
    text = "\n".join(str(i) for i in info.value.issues)
    assert message in text and "s.yaml:" in text


# -- per-sample batching --------------------------------------------------------------------

SOFTMAX_ROWS = """
def forward(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
def backward(g, x):
    y = forward(x)
    return y * (g - (g * y).sum(axis=1, keepdims=True))
"""

#: every row is centred on the batch's column means: rows are not independent
BATCH_CENTRED = """
def forward(x):
    return np.tanh(x - x.mean(axis=0))
def backward(g, x):
    d = g * (1 - np.tanh(x - x.mean(axis=0)) ** 2)
    return d - d.mean(axis=0)
"""


def test_groups_of_a_batch_input_go_stacked_into_one_call(tmp_path: Path) -> None:
    r = run(tmp_path, SOFTMAX_ROWS, inputs={"x": {"shape": [16, 40]}})
    assert r["x"].status is Status.PASS
    assert r["x"].method.startswith("colored: 40 groups, structure detected: axis 0->0")
    assert "stacked copies of the batch per call" in r["x"].method


def test_a_batch_that_does_not_stack_is_evaluated_as_itself(tmp_path: Path) -> None:
    r = run(tmp_path, BATCH_CENTRED, inputs={"x": {"shape": [16, 40]}})
    assert r["x"].status is Status.PASS
    assert "the batch does not stack" in r["x"].method and "stacked copies" not in r["x"].method


#: rows scaled by their position in the batch: copy 0 of a stack looks right, the last does not
POSITIONAL = (
    SOFTMAX_ROWS.replace(
        "    return e / e.sum(axis=1, keepdims=True)",
        "    return e / e.sum(axis=1, keepdims=True) * (1 + np.arange(x.shape[0]))[:, None]",
    )
    .replace("    y = forward(x)\n", "    s = (1 + np.arange(x.shape[0]))[:, None]\n    y = forward(x) / s\n")
    .replace(
        "    return y * (g - (g * y).sum(axis=1, keepdims=True))",
        "    gs = g * s\n    return y * (gs - (gs * y).sum(axis=1, keepdims=True))",
    )
)


def test_a_batch_position_dependence_is_caught_on_the_last_copy(tmp_path: Path) -> None:
    r = run(tmp_path, POSITIONAL, inputs={"x": {"shape": [16, 40]}})
    assert r["x"].status is Status.PASS, r["x"].message
    assert "the batch does not stack" in r["x"].method


def test_the_memory_budget_bounds_the_stacked_copies(tmp_path: Path) -> None:
    from specgrad.compile import compile_spec
    from specgrad.runner import run_spec

    (tmp_path / "m_rows.py").write_text("import numpy as np\n" + SOFTMAX_ROWS)
    path = tmp_path / "s.yaml"
    path.write_text(
        "specgrad: 1\nname: t\ndescription: d\nforward: m_rows:forward\nbackward: m_rows:backward\n"
        "inputs:\n  x: {shape: [16, 40]}\ndtypes: [float64]\ncases: [random]\n"
    )
    spec = parse_spec(path)
    roomy = {r.target: r for r in run_spec(spec, compile_spec(spec, max_memory=1 << 30))}
    tight = {r.target: r for r in run_spec(spec, compile_spec(spec, max_memory=300 << 10))}
    assert "stacked" in roomy["x"].method and "stacked" not in tight["x"].method
    assert roomy["x"].status is tight["x"].status is Status.PASS
    assert roomy["x"].comparison is not None and tight["x"].comparison is not None
    assert roomy["x"].comparison.worst_ratio == pytest.approx(tight["x"].comparison.worst_ratio, rel=1e-6)


def test_the_allocator_is_tuned_once_where_there_is_glibc() -> None:
    import sys

    from specgrad.process import tune_allocator

    tuned = tune_allocator()
    assert tune_allocator() is tuned
    if sys.platform.startswith("linux"):
        import platform

        assert tuned or platform.libc_ver()[0] != "glibc"


def test_owner_maps_beyond_the_cache_budget_are_recomputed_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import specgrad.structure as structure

    monkeypatch.setattr(structure, "OWNER_CACHE_BYTES", 1000)
    links = (Link(2, 2, -1, 1), Link(3, 3, -1, 1))
    small = coloring((2, 3, 9, 9), links, [(2, 4, 9, 9)], "declared")
    groups = list(small.groups())
    assert not small._owner_cache and not any(g.shared for g in groups)
    monkeypatch.setattr(structure, "OWNER_CACHE_BYTES", 256 << 20)
    again = coloring((2, 3, 9, 9), links, [(2, 4, 9, 9)], "declared")
    for a, b in zip(groups, again.groups(), strict=True):
        assert np.array_equal(a.elements, b.elements) and np.array_equal(a.owners[0], b.owners[0])
    x = RNG.normal(size=(2, 3, 9, 9))
    w, bias = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=4)
    g = RNG.normal(size=(2, 4, 9, 9))

    def evaluate() -> tuple[Any, ...]:
        return (conv.forward(x, w, bias, 1, 1),)

    monkeypatch.setattr(structure, "OWNER_CACHE_BYTES", 1000)
    uncached = colored_difference(
        evaluate, x, [g], coloring(x.shape, links, [g.shape], "d"), 1e-4, 2.0**-53, np
    )
    monkeypatch.setattr(structure, "OWNER_CACHE_BYTES", 256 << 20)
    cached = colored_difference(
        evaluate, x, [g], coloring(x.shape, links, [g.shape], "d"), 1e-4, 2.0**-53, np
    )
    assert np.array_equal(uncached.value, cached.value) and np.array_equal(uncached.noise, cached.noise)


# -- found in review: silent passes the grouped path must not allow ----------------------------

#: a large second output moves only where x > 0: counted unmoved, it inflated the noise of the
#: elements where it stays put, and hid a 3% error there
LARGE_UNMOVED = """
def forward(x, w):
    return x * w, 1e10 + np.maximum(x, 0)
def backward(g, x, w):
    gy, gz = g
    return gy * w * np.where(x > 0, 1.0, 1.03) + gz * (x > 0), gy * x
"""

#: y[3, 20] also depends on x[1, 7]; the backward credits it to x[3, 20]: exactly what a
#: colored difference shows when the two share a group (elementwise probes see no coupling)
CREDITED_TO_THE_WRONG_ELEMENT = """
def forward(x):
    y = np.tanh(x)
    y[3, 20] += 0.7 * x[1, 7]
    return y
def backward(g, x):
    d = g * (1 - np.tanh(x) ** 2)
    d[3, 20] += 0.7 * g[3, 20]
    return d
"""


def test_a_large_output_that_does_not_move_adds_no_noise(tmp_path: Path) -> None:
    r = run(tmp_path, LARGE_UNMOVED, inputs={"x": {"shape": [8, 16]}}, parameters={"w": {"shape": [8, 16]}})
    assert r["x"].status is Status.FAIL


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("huge", [False, True])
def test_a_gradient_credited_to_a_group_mate_fails_for_every_seed(
    tmp_path: Path, seed: int, huge: bool
) -> None:
    """The seeded mix of the interference check misses such a pair half the time; the
    whole-tensor difference (`structured.across`) does not, and a huge output elsewhere
    (which once set the tolerance of every output) hides nothing."""
    source = CREDITED_TO_THE_WRONG_ELEMENT
    if huge:
        source = source.replace("    return y\n", "    y[5, 30] += 1e10\n    return y\n")
    inputs = {"x": {"shape": [6, 32], "fill": {"kind": "uniform", "low": -1, "high": 1}}}
    r = run(tmp_path, source, inputs=inputs, seed=seed, contracts={"taylor": False})
    assert r["x"].status is Status.FAIL, r["x"].method
    assert "wrong at 2 of 192 elements" in r["x"].message  # x[3, 20] (extra) and x[1, 7] (missing)


def test_fast_mode_probes_the_precision_before_falling_back_to_elements(tmp_path: Path) -> None:
    """A layer that computes in float32 whatever it is given: its float64 step measures
    rounding, which looked like kinks to the directions and failed element by element."""
    source = (
        "def forward(x):\n    return np.tanh(x.astype(np.float32)).astype(x.dtype) * 3\n"
        "def backward(g, x):\n    return (g * 3 * (1 - np.tanh(x.astype(np.float32)) ** 2)).astype(x.dtype)\n"
    )
    for dtype in ("float32", "float64"):
        r = run(
            tmp_path, source, inputs={"x": {"shape": [8, 16]}}, dtypes=[dtype], method={"mode": "directional"}
        )
        assert r["x"].status is Status.PASS, r["x"].message


def test_a_forward_that_fails_in_a_group_is_traced_to_its_element(tmp_path: Path) -> None:
    source = (
        "def forward(x):\n    if x[2, 5] > 2.0:\n        raise ValueError('x[2, 5] left the domain')\n"
        "    return np.tanh(x)\n"
        "def backward(g, x):\n    return g * (1 - np.tanh(x) ** 2)\n"
    )
    inputs = {"x": {"shape": [8, 16], "fill": {"kind": "constant", "value": 1.9999999}}}
    r = run(tmp_path, source, inputs=inputs)
    assert r["x"].status is Status.ERROR and "perturbing x[2, 5]: forward raised ValueError" in r["x"].message


def test_strided_windows_over_lengths_that_do_not_divide_are_detected_wide_enough(tmp_path: Path) -> None:
    """A stride-2 3x3 conv over 9 elements gives 5 outputs: the window drifts against the
    mapped position along the axis, so the probes' offsets are widened by one."""
    x = RNG.normal(size=(2, 3, 9, 9))
    w, b = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=4)
    links = _detected(lambda x: conv.forward(x, w, b, 2, 1), x)
    assert links is not None and Link(2, 2, -2, 1) in links and Link(3, 3, -2, 1) in links
    source = (
        "from specgrad.zoo import conv\n"
        "def forward(x, w, b):\n    return conv.forward(x, w, b, 2, 1)\n"
        "def backward(g, x, w, b):\n    return conv.backward(g, x, w, b, 2, 1)\n"
    )
    r = run(
        tmp_path,
        source,
        inputs={"x": {"shape": [2, 3, 9, 9]}},
        parameters={"w": {"shape": [4, 3, 3, 3]}, "b": {"shape": [4]}},
    )
    assert r["x"].status is Status.PASS and r["x"].method.startswith("colored: 147 groups"), r["x"].method
