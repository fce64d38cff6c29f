"""Several implementations of one contract, frameworks and autograd in specs, shared
bases (extends/abstract): schema and semantic errors, the model, the compiled ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specgrad.compile import compile_spec
from specgrad.errors import SpecError
from specgrad.loader import load_spec_text
from specgrad.model import AutogradBinding, FunctionBinding, spec_from_validated
from specgrad.validate import parse_spec, validate_raw
from tests.unit.test_validate import BASE, messages, with_

CONTRACT = {k: v for k, v in BASE.items() if k not in ("forward", "backward")}
TWO = {
    **CONTRACT,
    "implementations": {
        "numpy": {"forward": "layers:forward", "backward": "layers:backward"},
        "torch": {"framework": "torch", "forward": "tl:forward", "backward": "autograd", "jvp": "autograd"},
    },
}


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (with_(framework="troch"), "framework: unknown framework 'troch' (did you mean 'torch'?"),
        (
            with_(backward="autograd"),
            "backward: backward: autograd needs a framework with automatic differentiation (torch, jax); this binding's framework is numpy",
        ),
        (
            with_(framework="torch", backward="autograd", convention="cached"),
            "backward: autograd derives the VJP of a forward that returns its outputs: it needs the functional convention, not cached",
        ),
        (
            with_(framework="numpy", jvp="autograd"),
            "jvp: jvp: autograd needs a framework with forward mode; numpy has none",
        ),
        (with_(jvp="forward"), "jvp: expected one of autograd; got string 'forward'"),
        (with_(backward="autograd!"), "backward: expected an import string"),
        (
            {**TWO, "forward": "layers:forward"},
            "forward: with implementations:, 'forward' goes inside each implementation",
        ),
        ({**TWO, "reference": "jax"}, "reference: no implementation named 'jax'"),
        (
            with_(reference="numpy"),
            "reference: reference names one of implementations:, which this spec has not",
        ),
        (
            {**TWO, "second_order": {"backward": "m:f", "grad_out": {"shape": [2]}}},
            "second_order is checked in the short form only",
        ),
        (
            {**CONTRACT, "implementations": {"a": {"forward": "m:f"}}},
            "implementations.a: missing required field 'backward'",
        ),
        (
            {**CONTRACT, "implementations": {"a b": {"forward": "m:f", "backward": "m:g"}}},
            "invalid name 'a b'",
        ),
        ({**TWO, "agreement": {"float32": {"rtol": 1e-3}}}, "'rtol' needs a 'reason' beside it"),
        (
            with_(
                framework="torch",
                backward="autograd",
                second_order={"backward": "m:f", "grad_out": {"shape": [2]}},
            ),
            "with backward: autograd there is none",
        ),
        (with_(verified_with={"torch": 2}), "verified_with.torch: expected a string"),
        (
            with_(framework="torch", jvp="autograd"),
            "jvp: jvp: autograd checks the forward mode the framework derives alongside backward: autograd",
        ),
    ],
)
def test_errors(doc: Any, expected: str) -> None:
    found = messages(doc)
    assert any(expected in m for m in found), found


def test_implementations_build_one_spec_each(tmp_path: Path) -> None:
    spec = parse_spec(
        write(
            tmp_path / "s.yaml",
            {
                **TWO,
                "attrs": {"k": 1},
                "implementations": {
                    **TWO["implementations"],
                    "jax": {"framework": "jax", "forward": "jl:f", "backward": "autograd", "attrs": {"k": 2}},
                },
            },
        )
    )
    assert spec.binding is None and spec.reference == "numpy"
    numpy, torch, jax = spec.implementations
    assert (numpy.name, torch.name, jax.name) == ("lin@numpy", "lin@torch", "lin@jax")
    assert isinstance(numpy.binding, FunctionBinding) and numpy.framework == "numpy" and not numpy.jvp
    assert isinstance(torch.binding, AutogradBinding) and torch.framework == "torch" and torch.jvp
    assert torch.binding.forward.field == "implementations.torch.forward"
    assert dict(jax.attrs) == {"k": 2} and dict(torch.attrs) == {"k": 1}
    assert torch.tensors == spec.tensors and torch.contract == "lin"


def test_compiled_ids_name_each_implementation_and_agreement(tmp_path: Path) -> None:
    spec = parse_spec(write(tmp_path / "s.yaml", {**TWO, "dtypes": ["float64"], "cases": ["random"]}))
    ids = [p.check_id(t) for p in compile_spec(spec) for t in p.targets]
    assert ids[:2] == ["lin@numpy[float64,random]::x", "lin@numpy[float64,random]::w"]
    assert "lin@torch[float64,random]::contract.jvp" in ids
    assert "lin@numpy[float64,random]::contract.jvp" not in ids
    assert ids[-1] == "lin[float64,random]::agree.torch"
    assert sum(i.endswith("agree.torch") for i in ids) == 1 and not any("agree.numpy" in i for i in ids)


def test_extends_merges_a_base_and_locates_its_values(tmp_path: Path) -> None:
    base = {**CONTRACT, "abstract": True, "dtypes": ["float64"], "inputs": {"x": {"shape": [2, 3]}}}
    write(tmp_path / "base.yaml", base)
    (tmp_path / "sub").mkdir()
    derived = {
        "specgrad": 1,
        "extends": "../base.yaml",
        "name": "derived",
        "parameters": None,  # removes the base's w
        "inputs": {"y": {"shape": [4]}},
        **{k: TWO[k] for k in ("implementations",)},
    }
    spec = parse_spec(write(tmp_path / "sub" / "d.yaml", derived))
    assert not spec.abstract and spec.name == "derived" and spec.dtypes == ("float64",)
    assert [t.name for t in spec.tensors] == ["x", "y"]
    assert Path(spec.tensor("x").location.file).resolve() == (tmp_path / "base.yaml").resolve()
    # an error in a value the base gave is located in the base file
    write(tmp_path / "base.yaml", {**base, "dtypes": ["float65"]})
    with pytest.raises(SpecError) as info:
        parse_spec(tmp_path / "sub" / "d.yaml")
    assert "base.yaml" in str(info.value.issues[0]) and "dtypes[0]" in str(info.value.issues[0])


def test_extends_cycle_and_missing_base(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {**BASE, "extends": "b.yaml"})
    write(tmp_path / "b.yaml", {**BASE, "extends": "a.yaml"})
    with pytest.raises(SpecError, match="extend each other in a cycle"):
        parse_spec(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", {**BASE, "extends": "nope.yaml"})
    with pytest.raises(SpecError, match=r"c\.yaml:\d+:\d+: extends: no base spec file .*nope\.yaml"):
        parse_spec(tmp_path / "c.yaml")


def test_abstract_spec_needs_no_binding_and_compiles_to_nothing(tmp_path: Path) -> None:
    spec = parse_spec(write(tmp_path / "s.yaml", {**CONTRACT, "abstract": True}))
    assert spec.abstract and spec.binding is None and compile_spec(spec) == ()
    layered = parse_spec(write(tmp_path / "l.yaml", {**CONTRACT, "abstract": True, "convention": "layer"}))
    assert layered.abstract and layered.binding is None
    half = parse_spec(write(tmp_path / "h.yaml", {**CONTRACT, "abstract": True, "forward": "m:f"}))
    assert half.abstract and half.binding is None
    assert any("missing required field 'forward'" in m for m in messages(CONTRACT))


def test_extends_a_base_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("- 1\n- 2\n")
    write(tmp_path / "s.yaml", {**BASE, "extends": "base.yaml"})
    with pytest.raises(SpecError, match=r"extends: the base spec .*base\.yaml is not a YAML mapping"):
        parse_spec(tmp_path / "s.yaml")


def test_a_binding_inherited_beside_implementations_names_the_fix(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    write(
        tmp_path / "s.yaml",
        {"specgrad": 1, "extends": "base.yaml", "implementations": TWO["implementations"]},
    )
    with pytest.raises(SpecError) as info:
        parse_spec(tmp_path / "s.yaml")
    text = "\n".join(map(str, info.value.issues))
    assert (
        "s.yaml" in text and "'forward' is inherited from" in text and "'forward: null' in this spec" in text
    )


impl_field = st.sampled_from(["framework", "convention", "forward", "backward", "layer", "jvp", "attrs"])
impl_value = st.one_of(
    st.sampled_from(
        ["numpy", "torch", "jax", "troch", "functional", "cached", "layer", "autograd", "m:f", "x"]
    ),
    st.none(),
    st.integers(-2, 2),
    st.fixed_dictionaries({"class": st.sampled_from(["m:C", "bad"])}),
    st.dictionaries(st.sampled_from(["k", "eps"]), st.integers(0, 3), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["numpy", "torch", "jax", "a b", "1x"]),
        st.dictionaries(impl_field, impl_value, max_size=5),
        max_size=3,
    ),
    st.dictionaries(
        st.sampled_from(
            ["reference", "agreement", "verified_with", "abstract", "forward", "backward", "jvp"]
        ),
        st.one_of(
            impl_value, st.fixed_dictionaries({"float32": st.fixed_dictionaries({"rtol": st.floats(0, 1)})})
        ),
        max_size=3,
    ),
)
def test_generated_implementation_documents_validate_or_fail_located(
    impls: dict[str, dict[str, Any]], top: dict[str, Any]
) -> None:
    """Every document with implementations becomes a spec (whose plans compile) or located
    issues; no other exception."""
    doc = {**CONTRACT, **top, "implementations": impls}
    raw = load_spec_text(yaml.safe_dump(doc, sort_keys=False), Path("s.yaml"))
    issues = validate_raw(raw)
    for issue in issues:
        assert issue.location.line >= 1 and issue.message
    if not issues:
        spec = spec_from_validated(raw)
        assert [s.implementation for s in spec.implementations] == list(impls)
        compile_spec(spec)
