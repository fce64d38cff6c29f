"""Import strings and the three calling conventions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from specgrad.bindings import ContractError, LayerEvaluator, grads_by_name, make_evaluator
from specgrad.errors import Location, SpecError
from specgrad.imports import resolve
from specgrad.model import ImportRef
from specgrad.validate import parse_spec


def ref(target: str, line: int = 4) -> ImportRef:
    return ImportRef(target, Location(Path("s.yaml"), line, 10), "forward")


def test_resolves_from_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "mylayers_a.py").write_text("class K:\n    @staticmethod\n    def f(x):\n        return x\n")
    assert resolve(ref("mylayers_a:K.f"), tmp_path)(3) == 3


def test_same_module_name_in_two_folders(tmp_path: Path) -> None:
    for sub, value in (("a", 1), ("b", 2)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "samename_layers.py").write_text(f"def f():\n    return {value}\n")
    assert resolve(ref("samename_layers:f"), tmp_path / "a")() == 1
    assert resolve(ref("samename_layers:f"), tmp_path / "b")() == 2


@pytest.mark.parametrize(
    "source, target, fragment",
    [
        (None, "no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        (
            "def forward(x):\n    return x\n",
            "{mod}:fowrard",
            "has no attribute 'fowrard' (did you mean 'forward'?)",
        ),
        ("value = 3\n", "{mod}:value", "is a int, not a callable"),
        ("raise RuntimeError('at import')\n", "{mod}:f", "raised RuntimeError: at import"),
        ("import no_such_dependency_xyz\n", "{mod}:f", "raised ModuleNotFoundError"),
    ],
)
def test_import_failures_are_located(tmp_path: Path, source: str | None, target: str, fragment: str) -> None:
    mod = f"imp_{abs(hash((source, target))) % 10**8}"
    if source is not None:
        (tmp_path / f"{mod}.py").write_text(source)
    with pytest.raises(SpecError) as info:
        resolve(ref(target.format(mod=mod)), tmp_path)
    (issue,) = info.value.issues
    assert str(issue).startswith("s.yaml:4:10: forward:") and fragment in issue.message


def _spec(tmp_path: Path, doc: dict[str, Any]):  # type: ignore[no-untyped-def]
    base = {"specgrad": 1, "name": "t", "description": "d", **doc}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return parse_spec(path)


FUNCTIONAL = {
    "forward": "m:f",
    "backward": "m:b",
    "inputs": {"x": {"shape": [2]}, "lab": {"shape": [2], "grad": False}},
    "parameters": {"w": {"shape": [2]}},
}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ((1, 2), {"x": 1, "w": 2}),  # one per differentiable tensor
        ((1, None, 2), {"x": 1, "w": 2}),  # one per tensor, None for the others
        ({"x": 1, "w": 2}, {"x": 1, "w": 2}),
        ({"x": 1, "w": 2, "lab": None}, {"x": 1, "w": 2}),
    ],
)
def test_grads_by_name_accepts(tmp_path: Path, raw: Any, expected: dict[str, Any]) -> None:
    assert grads_by_name(raw, _spec(tmp_path, FUNCTIONAL)) == expected


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (None, "backward returned None"),
        ((1,), "returned 1 gradient(s); expected 2"),
        ((1, 2, 3, 4), "returned 4 gradient(s)"),
        ((1, 5, 2), "returned 3 gradient(s)"),  # a value where lab's None belongs
        ({"x": 1}, "missing w"),
        ({"x": 1, "w": 2, "q": 3}, "unexpected q"),
    ],
)
def test_grads_by_name_rejects(tmp_path: Path, raw: Any, fragment: str) -> None:
    with pytest.raises(ContractError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        grads_by_name(raw, _spec(tmp_path, FUNCTIONAL))


def test_gradients_from_a_generator(tmp_path: Path) -> None:
    assert grads_by_name((g for g in (1, 2)), _spec(tmp_path, FUNCTIONAL)) == {"x": 1, "w": 2}


def test_single_gradient_may_be_bare(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"forward": "m:f", "backward": "m:b", "inputs": {"x": {"shape": [2]}}})
    assert grads_by_name("g", spec) == {"x": "g"}


LAYERS = '''
import numpy as np

class Eager:
    """Parameters exist from the constructor, in an attribute and a nested object."""
    def __init__(self, n):
        self.W = np.zeros((n, n))
        self.grads = type("G", (), {})()
    def forward(self, x):
        self.x = x
        return x @ self.W
    def backward(self, g):
        self.grads.W = self.x.T @ g
        return g @ self.W.T

class Lazy:
    """A dict of parameters created, with random values, on the first forward only."""
    def forward(self, x):
        if not hasattr(self, "state"):
            self.state = {"W": np.ones((x.shape[1], 3))}
            self.calls = 0
        self.calls += 1
        self.x = x
        return x @ self.state["W"]
    def backward(self, g):
        self.dW = self.x.T @ g
        return g @ self.state["W"].T
'''


def _layer_spec(tmp_path: Path, cls: str, value: str, grad: str, init: dict[str, Any]):  # type: ignore[no-untyped-def]
    (tmp_path / "binding_layers.py").write_text(LAYERS)
    return _spec(
        tmp_path,
        {
            "convention": "layer",
            "layer": {
                "class": f"binding_layers:{cls}",
                "init": init,
                "params": {"W": {"value": value, "grad": grad}},
            },
            "inputs": {"x": {"shape": [2, 3]}},
            "parameters": {"W": {"shape": [3, 3]}},
        },
    )


@pytest.mark.parametrize(
    "cls, value, grad, init, warm",
    [
        ("Eager", "W", "grads.W", {"n": 3}, False),
        ("Lazy", "state['W']", "dW", {}, True),
    ],
)
def test_layer_evaluator_uses_our_parameters(
    tmp_path: Path, cls: str, value: str, grad: str, init: dict[str, Any], warm: bool
) -> None:
    sys.modules.pop("binding_layers", None)
    spec = _layer_spec(tmp_path, cls, value, grad, init)
    ev = make_evaluator(spec)
    assert isinstance(ev, LayerEvaluator)
    x, w = np.ones((2, 3)), np.arange(9.0).reshape(3, 3)
    out, layer = ev.forward({"x": x, "W": w})
    assert np.array_equal(out, x @ w) and ev._warm_up is warm
    w[0, 0] = 100.0  # perturbing our array in place reaches the next evaluation
    out2, layer2 = ev.forward({"x": x, "W": w})
    assert layer2 is not layer and out2[0, 0] == 100.0 + 3 + 6
    input_grad, params = ev.backward(layer2, np.ones((2, 3)))
    assert input_grad.shape == (2, 3) and params["W"].shape == (3, 3)


def test_layer_shape_mismatch_is_a_contract_error(tmp_path: Path) -> None:
    sys.modules.pop("binding_layers", None)
    spec = _layer_spec(tmp_path, "Lazy", "state['W']", "dW", {})
    ev = make_evaluator(spec)
    with pytest.raises(ContractError, match="made parameter 'W' with shape"):
        ev.forward({"x": np.ones((2, 4)), "W": np.ones((3, 3))})


def test_missing_gradient_path_is_a_located_spec_error(tmp_path: Path) -> None:
    """The first evaluation probes the binding: one forward and one backward on a spare
    layer, after which every gradient path must resolve."""
    sys.modules.pop("binding_layers", None)
    spec = _layer_spec(tmp_path, "Eager", "W", "grads.nope", {"n": 3})
    ev = make_evaluator(spec)
    with pytest.raises(SpecError) as info:
        ev.forward({"x": np.ones((2, 3)), "W": np.ones((3, 3))})
    (issue,) = info.value.issues
    assert issue.field == "layer.params.W.grad" and issue.location.line > 1
    assert "cannot read 'grads.nope'" in issue.message and "is the path misspelled?" in issue.message


def test_cached_forward_must_return_a_pair(tmp_path: Path) -> None:
    (tmp_path / "cached_bad.py").write_text("def f(x):\n    return x\ndef b(g, c):\n    return g\n")
    spec = _spec(
        tmp_path,
        {
            "convention": "cached",
            "forward": "cached_bad:f",
            "backward": "cached_bad:b",
            "inputs": {"x": {"shape": [2]}},
        },
    )
    with pytest.raises(ContractError, match=r"must return \(out, cache\)"):
        make_evaluator(spec).forward({"x": np.ones(2)})


def test_each_spec_folder_gets_its_own_modules_and_helpers(tmp_path: Path) -> None:
    """Folders a/ and b/ each have layers.py importing their own helpers.py; the root has
    its own layers.py too. Whatever the order, each resolves to its own code."""
    for sub, value in (("a", 1), ("b", 2), (".", 3)):
        d = tmp_path / sub
        d.mkdir(exist_ok=True)
        (d / "iso_helpers.py").write_text(f"VALUE = {value}\n")
        (d / "iso_layers.py").write_text("import iso_helpers\ndef f():\n    return iso_helpers.VALUE\n")
    for folder, value in ((tmp_path / "a", 1), (tmp_path / "b", 2), (tmp_path, 3), (tmp_path / "a", 1)):
        assert resolve(ref("iso_layers:f"), folder)() == value
    fa = resolve(ref("iso_layers:f"), tmp_path / "a")
    resolve(ref("iso_layers:f"), tmp_path / "b")
    assert fa() == 1  # callables resolved earlier keep their own module
