from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specgrad.errors import SpecError
from specgrad.loader import load_spec_text
from specgrad.model import FunctionBinding, LayerBinding
from specgrad.validate import parse_spec, schema_text, validate_raw

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "specgrad": 1,
    "name": "lin",
    "description": "d",
    "forward": "layers:forward",
    "backward": "layers:backward",
    "inputs": {"x": {"shape": [2, 3]}},
    "parameters": {"w": {"shape": [4, 3]}},
}


def messages(doc: Any, path: Path = Path("s.yaml")) -> list[str]:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    return [str(i) for i in validate_raw(load_spec_text(text, path))]


def with_(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def test_minimal_spec_is_valid_and_has_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    spec = parse_spec(path)
    assert spec.dtypes == ("float32", "float64")
    assert [c.name for c in spec.cases] == ["random", "wide", "special"]
    assert spec.kinks == "subgradient"
    assert spec.seed == 42
    assert [t.name for t in spec.tensors] == ["x", "w"]
    assert [t.role for t in spec.tensors] == ["input", "parameter"]
    assert isinstance(spec.binding, FunctionBinding) and spec.binding.convention == "functional"
    assert spec.tolerances["float32"].epsilon == pytest.approx(0.25 * (2.0**-23) ** (1 / 3))
    special = spec.cases[1]
    assert set(special.fills) == {"x", "w"}


def test_schema_file_is_valid_2020_12() -> None:
    import jsonschema

    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")


def test_packaged_schema_is_the_top_level_one() -> None:
    assert schema_text() == (REPO / "schemas" / "spec.schema.json").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "doc, expected",
    [
        (with_(specgrad=2), "s.yaml:1:11: specgrad: unsupported spec format version 2"),
        (with_(inptus={}), "unknown field 'inptus' (did you mean 'inputs'?)"),
        (with_(inputs={"x": {"shpae": [1]}}), "unknown field 'shpae' (did you mean 'shape'?)"),
        (with_(inputs={"x": {"shape": [2, -3]}}), "inputs.x.shape[1]: expected a value >= 1, got integer -3"),
        (with_(inputs={"x": {"shape": [2, 0]}}), "inputs.x.shape[1]: expected a value >= 1, got integer 0"),
        (with_(inputs={"x": {"shape": "2x3"}}), "inputs.x.shape: expected a list, got string '2x3'"),
        (
            with_(dtypes=["float8"]),
            "dtypes[0]: expected one of float16, float32, float64; got string 'float8'",
        ),
        (with_(dtypes=["flaot32"]), "(did you mean 'float32'?)"),
        (with_(inputs={"x": {"shape": [1], "dtype": "int8"}}), "inputs.x.dtype: expected one of"),
        (with_(forward="layers.forward"), "forward: expected an import string 'package.module:qualname'"),
        (with_(seed=-1), "seed: expected a value >= 0"),
        (with_(inputs={"1x": {"shape": [1]}}), "invalid name '1x'"),
        (with_(inputs={"x": {"shape": [1], "grad": "yes"}}), "expected true or false, got string 'yes'"),
        (with_(inputs={"x": {"shape": [1], "fill": "constant"}}), "needs the mapping form"),
        (
            with_(inputs={"x": {"shape": [1], "fill": {"kind": "normal", "std": 0}}}),
            "inputs.x.fill.std: expected a value > 0",
        ),
        (with_(inputs={"x": {"shape": [1], "fill": {"kind": "constant"}}}), "missing required field 'value'"),
        (with_(tolerances={"float32": {"rtol": -1}}), "tolerances.float32.rtol: expected a value >= 0"),
        (with_(tolerances={"float32": {"eps": 1}}), "unknown field 'eps'"),
        (with_(cases=["sharp"]), "cases[0]: expected one of random, wide, special"),
        (
            with_(tolerances={"float32": {"rtol": 0.1}}),
            "tolerances.float32.rtol: 'rtol' needs a 'reason' beside it",
        ),
        (
            with_(tolerances={"float64": {"atol": 0.1, "reason": ""}}),
            "tolerances.float64.reason: must not be empty",
        ),
        (with_(kinks="ignore"), "kinks: expected one of subgradient, skip, fail"),
        (with_(cases=[]), "cases: must not be empty"),
        (with_(inputs={}), "inputs: must not be empty"),
        ({k: v for k, v in BASE.items() if k != "name"}, "missing required field 'name'"),
        (
            {k: v for k, v in BASE.items() if k != "forward"},
            "missing required field 'forward' (the functional",
        ),
        (with_(convention="layer"), "missing required field 'layer'"),
        ("- a\n- b\n", "a spec is a YAML mapping, got list"),
    ],
)
def test_schema_errors(doc: Any, expected: str) -> None:
    msgs = messages(doc)
    assert any(expected in m for m in msgs), msgs
    assert all(m.startswith("s.yaml:") for m in msgs)


@pytest.mark.parametrize(
    "doc, expected",
    [
        (with_(parameters={"x": {"shape": [1]}}), "parameters.x: 'x' is already an input"),
        (
            with_(
                inputs={
                    "x": {
                        "shape": [1],
                        "dtype": "int64",
                        "grad": True,
                        "fill": {"kind": "integers", "high": 3},
                    }
                }
            ),
            "cannot be differentiated",
        ),
        (with_(inputs={"x": {"shape": [1], "dtype": "int64"}}), "needs a fill"),
        (
            with_(inputs={"x": {"shape": [1], "dtype": "int64", "fill": "normal"}}),
            "a normal fill makes non-integer values",
        ),
        (
            with_(inputs={"x": {"shape": [1], "fill": {"kind": "uniform", "low": 1, "high": 1}}}),
            "empty range: low (1) must be below high (1)",
        ),
        (
            with_(
                dtypes=["float16"],
                inputs={"x": {"shape": [3], "fill": {"kind": "special", "values": [0.5, 0.1]}}},
            ),
            "inputs.x.fill.values[1]: 0.1 is not exactly representable in float16",
        ),
        (with_(inputs={"x": {"shape": [3], "fill": {"kind": "npy", "path": "nope.npy"}}}), "no such file"),
        (with_(cases=["random", "random"]), "duplicate case name 'random'"),
        (
            with_(cases=[{"name": "c", "fills": {"xx": "special"}}]),
            "no tensor named 'xx' (did you mean 'x'?)",
        ),
        (with_(inputs={"x": {"shape": [1], "grad": False}}, parameters={}), "nothing to check"),
        (with_(attrs={"not valid": 1}), "not a valid keyword argument name"),
        (with_(inputs={"x": {"shape": [100000, 100000]}}), "elements; the limit"),
        (with_(layer={"class": "m:C"}), "a layer: block needs convention: layer"),
        (with_(inputs={"x": {"shape": [2.0, 3]}}), "inputs.x.shape[0]: expected an integer, got number 2.0"),
        (with_(seed=42.0), "seed: expected an integer, got number 42.0"),
        (
            with_(inputs={"x": {"shape": [1], "dtype": "int64", "fill": {"kind": "integers", "high": 3.0}}}),
            "inputs.x.fill.high: expected an integer",
        ),
        (
            with_(inputs={"x": {"shape": [1], "fill": {"kind": "uniform", "high": float("inf")}}}),
            "inputs.x.fill.high: expected a finite number, got inf",
        ),
        (
            with_(inputs={"x": {"shape": [1], "fill": {"kind": "constant", "value": 10**400}}}),
            "inputs.x.fill.value: expected a finite number",
        ),
        (
            with_(tolerances={"float32": {"atol": float("inf"), "reason": "r"}}),
            "tolerances.float32.atol: expected a finite number",
        ),
        (with_(attrs={"x": 2.0}), "attrs.x: 'x' is also a tensor name"),
        (
            with_(convention="cached", second_order={"backward": "m:f", "grad_out": {"shape": [2]}}),
            "second_order: second_order needs the functional convention",
        ),
        (
            with_(
                inputs={"grad_out": {"shape": [2]}},
                second_order={"backward": "m:f", "grad_out": {"shape": [2]}},
            ),
            "rename the tensor called grad_out",
        ),
        (with_(method={"directions": 2.5}), "method.directions: expected an integer"),
        (
            with_(
                inputs={"x": {"shape": [2], "dtype": "float32"}},
                second_order={"backward": "m:f", "grad_out": {"shape": [2]}},
            ),
            "second_order needs differentiable tensors in the check's dtype; x has a fixed dtype",
        ),
    ],
)
def test_semantic_errors(doc: Any, expected: str) -> None:
    msgs = messages(doc)
    assert any(expected in m for m in msgs), msgs


def layer_doc(**layer: Any) -> dict[str, Any]:
    doc = {k: v for k, v in BASE.items() if k not in ("forward", "backward")}
    return {**doc, "convention": "layer", "layer": {"class": "m:Dense", **layer}}


def test_layer_binding_errors() -> None:
    assert any("missing layer.params.w" in m for m in messages(layer_doc()))
    msgs = messages(layer_doc(params={"w": {"value": "p[", "grad": "g.w"}, "v": {"value": "a", "grad": "b"}}))
    assert any("layer.params.w.value: invalid access path" in m for m in msgs), msgs
    assert any("no parameter named 'v'" in m for m in msgs), msgs
    msgs = messages({**layer_doc(params={"w": {"value": "w", "grad": "dw"}}), "forward": "m:f"})
    assert any("takes method names in layer.forward" in m for m in msgs), msgs


def test_frozen_layer_parameter_needs_no_grad_path() -> None:
    doc = layer_doc(params={"w": {"value": "w"}})
    assert any("missing grad: where the gradient of differentiable parameter 'w'" in m for m in messages(doc))
    doc["parameters"] = {"w": {"shape": [4, 3], "grad": False}}
    assert messages(doc) == []


def test_a_tensor_named_init_is_checked_like_any_other() -> None:
    doc = with_(inputs={"init": {"shape": [2, 3.0]}})
    assert any("inputs.init.shape[1]: expected an integer" in m for m in messages(doc))


def test_attrs_and_init_may_hold_any_numbers() -> None:
    doc = layer_doc(params={"w": {"value": "w", "grad": "dw"}}, init={"big": 10**400, "f": 2.0})
    assert messages({**doc, "attrs": {"eps": float("inf")}}) == []


def test_layer_output_and_input_grads_errors() -> None:
    params = {"w": {"value": "w", "grad": "dw"}}
    msgs = messages(layer_doc(params=params, output="out[", input_grads={"y": "dy"}))
    assert any("layer.output: invalid access path" in m for m in msgs), msgs
    assert any("layer.input_grads.y: no input named 'y'" in m for m in msgs), msgs
    assert any("missing layer.input_grads.x" in m for m in msgs), msgs
    assert messages(layer_doc(params=params, output="output", input_grads={"x": "dinputs"})) == []


def test_layer_binding_model(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    doc = layer_doc(params={"w": {"value": "parameters['W']", "grad": "grads.W"}}, init={"n": 3})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    spec = parse_spec(path)
    assert isinstance(spec.binding, LayerBinding)
    assert spec.binding.forward == "forward" and dict(spec.binding.init) == {"n": 3}
    assert spec.binding.params["w"].value.text == "parameters['W']"


def test_npy_shape_mismatch(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    doc = with_(inputs={"x": {"shape": [3], "fill": {"kind": "npy", "path": "x.npy"}}})
    msgs = messages(doc, tmp_path / "s.yaml")
    assert any("x.npy has shape [2, 2], the tensor declares [3]" in m for m in msgs), msgs


def test_all_issues_reported_sorted_by_line() -> None:
    text = (
        "specgrad: 1\nname: 3\ndescription: d\nforward: a:b\nbackward: a:b\n"
        "inputs:\n  x: {shape: [-1]}\nbogus: 1\n"
    )
    msgs = messages(text)
    assert [m.split(":")[1] for m in msgs] == ["2", "7", "8"], msgs


def test_parse_spec_raises_with_all_issues(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("specgrad: 1\nname: x\n")
    with pytest.raises(SpecError) as info:
        parse_spec(path)
    missing = sorted(i.message.split("'")[1] for i in info.value.issues)
    assert missing == ["backward", "description", "forward", "inputs"]
    assert all(str(i).startswith(str(path)) for i in info.value.issues)


# --- property tests: every document becomes a spec or located errors, nothing else ----

fields = st.sampled_from(
    sorted(
        set(BASE)
        | {"dtypes", "cases", "seed", "attrs", "tolerances", "convention", "layer", "parameters"}
        | {"framework", "implementations", "reference", "agreement", "verified_with", "abstract", "jvp"}
    )
)
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 5),
        st.floats(allow_nan=False),
        st.sampled_from(["float32", "random", "special", "x", "m:f", "layer", "normal", "torch", "autograd"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["shape", "x", "kind", "fill", "w"]), inner, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(fields, values, max_size=4), st.sets(st.sampled_from(sorted(BASE)), max_size=3))
def test_mutated_documents_validate_or_fail_located(changes: dict[str, Any], drop: set[str]) -> None:
    doc = {k: v for k, v in {**BASE, **changes}.items() if k not in drop}
    raw = load_spec_text(yaml.safe_dump(doc, sort_keys=False), Path("s.yaml"))
    issues = validate_raw(raw)
    for issue in issues:
        assert issue.location.line >= 1 and issue.message
    if not issues:
        from specgrad.model import spec_from_validated

        spec = spec_from_validated(raw)
        assert spec.name == doc["name"]


shapes = st.lists(st.integers(1, 6), max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), shapes, min_size=1, max_size=4),
    st.lists(st.sampled_from(["float16", "float32", "float64"]), min_size=1, max_size=3, unique=True),
)
def test_generated_valid_specs_build_models(tensors: dict[str, list[int]], dtypes: list[str]) -> None:
    doc = with_(inputs={n: {"shape": s} for n, s in tensors.items()}, parameters={}, dtypes=dtypes)
    raw = load_spec_text(yaml.safe_dump(doc, sort_keys=False), Path("s.yaml"))
    assert validate_raw(raw) == []
    from specgrad.model import spec_from_validated

    spec = spec_from_validated(raw)
    assert [t.shape for t in spec.tensors] == [tuple(s) for s in tensors.values()]
    assert spec.dtypes == tuple(dtypes)
