"""Access paths, -k expressions, and compilation into check ids."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.access import parse_path
from specgrad.compile import CONTRACTS, check_id, compile_spec
from specgrad.errors import UsageError
from specgrad.select import compile_expression
from specgrad.validate import parse_spec

# --- access paths -----------------------------------------------------------------------


def test_access_get_and_set_through_attrs_keys_and_indices() -> None:
    layer = SimpleNamespace(params={"W": 1}, blocks=[SimpleNamespace(weight=2)], grads=SimpleNamespace())
    assert parse_path("params['W']").get(layer) == 1
    assert parse_path('params["W"]').get(layer) == 1
    assert parse_path("params.W").get(layer) == 1  # a dotted name falls back to a mapping key
    assert parse_path("blocks[0].weight").get(layer) == 2
    parse_path("blocks[0].weight").set(layer, 5)
    parse_path("params[W]").set(layer, 7)
    parse_path("grads.dW").set(layer, 9)
    assert layer.blocks[0].weight == 5 and layer.params["W"] == 7 and layer.grads.dW == 9


def test_access_missing_names_the_hop() -> None:
    layer = SimpleNamespace(params={})
    with pytest.raises(LookupError, match=r"params has no item \['W'\]"):
        parse_path("params['W']").get(layer)
    with pytest.raises(LookupError, match="the layer has no attribute 'nope'"):
        parse_path("nope.W").get(layer)


@pytest.mark.parametrize("text", ["", "a.", ".a", "a..b", "[0]", "a[", "a b", "a[0]b", "1a"])
def test_access_bad_paths(text: str) -> None:
    with pytest.raises(ValueError, match="invalid access path"):
        parse_path(text)


# --- -k expressions -----------------------------------------------------------------------

IDS = ["lin[float32,random]::x", "lin[float64,special]::w", "conv[float32,random]::contract.finite"]


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("float32", [0, 2]),
        ("float32 and not contract", [0]),
        ("lin or conv", [0, 1, 2]),
        ("not (lin and special)", [0, 2]),
        ("::W", [1]),  # case-insensitive substring
        ("contract.finite", [2]),
    ],
)
def test_selection(expr: str, expected: list[int]) -> None:
    match = compile_expression(expr)
    assert [i for i, s in enumerate(IDS) if match(s)] == expected


@pytest.mark.parametrize("expr", ["", "a and", "(a", "a)", "and a", "a or or b", "not"])
def test_bad_selection(expr: str) -> None:
    with pytest.raises(UsageError):
        compile_expression(expr)


# --- compile -------------------------------------------------------------------------------


def _spec(tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    doc = {
        "specgrad": 1,
        "name": "lin",
        "description": "d",
        "forward": "m:f",
        "backward": "m:b",
        "inputs": {"x": {"shape": [2]}, "y": {"shape": [2], "grad": False}},
        "parameters": {"w": {"shape": [2]}},
        **extra,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return parse_spec(path)


def test_compile_ids_are_stable_and_complete(tmp_path: Path) -> None:
    plans = compile_spec(_spec(tmp_path))
    assert [(p.dtype, p.case.name) for p in plans] == [
        ("float32", "random"),
        ("float32", "wide"),
        ("float32", "special"),
        ("float64", "random"),
        ("float64", "wide"),
        ("float64", "special"),
    ]
    ids = [p.check_id(t) for p in plans for t in p.targets]
    assert ids[:2] == ["lin[float32,random]::x", "lin[float32,random]::w"]
    assert "lin[float32,random]::y" not in ids  # grad: false
    assert len(ids) == 6 * (2 + len(CONTRACTS) - 1)  # contract.jvp: only with jvp: autograd
    assert ids == [p.check_id(t) for p in compile_spec(_spec(tmp_path)) for t in p.targets]


def test_compile_filters(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    plans = compile_spec(spec, dtypes=["float64"], seed=7, select=compile_expression("special and ::w"))
    assert [(p.dtype, p.case.name, p.targets, p.seed) for p in plans] == [("float64", "special", ("w",), 7)]
    assert compile_spec(spec, dtypes=["float16"]) == ()


def test_tolerance_overrides_merge_per_dtype(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tolerances={"float32": {"atol": 0.5, "reason": "why"}})
    t32 = next(p for p in compile_spec(spec) if p.dtype == "float32").tolerance
    t64 = next(p for p in compile_spec(spec) if p.dtype == "float64").tolerance
    assert (t32.atol, t32.rtol, t32.reason, t32.hand_set) == (0.5, 1e-3, "why", True)
    assert not t64.hand_set
    assert t64.atol == 1e-7


@settings(max_examples=60, deadline=None)
@given(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    st.sampled_from(["float16", "float32", "float64"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
)
def test_check_id_grammar(name: str, dtype: str, case: str, target: str) -> None:
    cid = check_id(name, dtype, case, target)
    head, _, tail = cid.partition("::")
    assert tail == target and head == f"{name}[{dtype},{case}]"
