"""`explain` finds and re-runs exactly one check; `new` writes specs that lint clean."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.errors import UsageError
from specgrad.explain import describe_fill, find_plan, report
from specgrad.loader import load_spec_text
from specgrad.model import Fill
from specgrad.runner import Engines, run_plan
from specgrad.scaffold import Scaffold, Tensor, parse_attr, parse_tensor, render
from specgrad.validate import parse_spec, validate_raw
from tests.conftest import FIXTURES, SPECS


def test_find_plan_narrows_to_the_one_check_and_keeps_its_evidence() -> None:
    specs = [parse_spec(SPECS / "relu.yaml"), parse_spec(SPECS / "conv2d.yaml")]
    plan = find_plan("conv2d[float32,wide]::w", specs)
    assert plan.targets == ("w",) and plan.dtype == "float32" and plan.case.name == "wide" and plan.evidence
    (result,) = run_plan(plan, Engines())
    assert result.check_id == "conv2d[float32,wide]::w" and result.evidence is not None


@pytest.mark.parametrize(
    ("check_id", "pattern"),
    [
        ("conv2d::w", r"not a check id"),
        (
            "conv2d[float32,wide]::q",
            r"no check conv2d\[float32,wide\]::q .*did you mean 'conv2d\[float32,wide\]::",
        ),
        ("conv3d[float32,wide]::w", r"no check .*did you mean 'conv2d\[float32,wide\]::w'"),
    ],
)
def test_unknown_check_ids(check_id: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        find_plan(check_id, [parse_spec(SPECS / "conv2d.yaml")])


def test_device_and_derived_ids_are_found() -> None:
    linear = parse_spec(SPECS / "linear.yaml")
    assert find_plan("linear[float64,random,sim]::x", [linear]).device == "sim"
    agreement = find_plan("linear[float64,random]::device.sim", [linear])
    assert agreement.kind == "devices" and agreement.targets == ("device.sim",)
    assert (
        find_plan("linear.second_order[float64,random]::grad_out", [linear]).spec.name
        == "linear.second_order"
    )


def test_report_says_everything_the_verdict_rests_on() -> None:
    spec = parse_spec(FIXTURES / "buggy" / "conv2d_channel.yaml")
    plan = find_plan("conv2d_channel[float32,random]::w", [spec])
    (result,) = run_plan(plan, Engines())
    text = report(plan, result, top=5)
    lines = text.splitlines()
    assert lines[0] == "conv2d_channel[float32,random]::w  FAIL"
    assert "conv2d_channel.yaml:9" in lines[1] and "seed 42" in lines[1]
    assert re.search(r"w +parameter \[4, 3, 3, 3\] +float32 +normal\(mean 0, std 1\)", text)
    assert "central differences in the float64 oracle" in text
    assert re.search(r"eps = 1\.51e-06", text)
    assert "out of bound 36 of 108" in text
    rows = [line for line in lines if re.match(r"\s+w\[\d", line)]
    assert len(rows) == 5 and all(re.match(r"\s+w\[\d+, 1,", row) for row in rows)  # channel 1 only


def test_fill_descriptions() -> None:
    assert describe_fill(Fill("uniform", low=0.1, high=2.0)) == "uniform[0.1, 2)"
    assert describe_fill(Fill("special", values=(0.0, 1.0), shuffle=True)) == "special values [0, 1] shuffled"
    assert describe_fill(Fill("constant", values=(3.0,))) == "constant 3"


def test_scaffold_lints_and_validates(tmp_path: Path) -> None:
    s = Scaffold(
        name="conv2d",
        forward="specgrad.zoo.conv:forward",
        backward="specgrad.zoo.conv:backward",
        inputs=(Tensor("x", (1, 3, 6, 6)),),
        parameters=(Tensor("w", (2, 3, 3, 3)), Tensor("b", (2,))),
        attrs=(("stride", 2), ("padding", 1)),
    )
    text = render(s)
    path = tmp_path / "conv2d.yaml"
    path.write_text(text)
    spec = parse_spec(path)
    assert [t.name for t in spec.tensors] == ["x", "w", "b"] and dict(spec.attrs) == {
        "stride": 2,
        "padding": 1,
    }
    assert sum(line.startswith("#") for line in text.splitlines()) >= 10  # commented


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x=1,3,8,8", Tensor("x", (1, 3, 8, 8))),
        ("b=4", Tensor("b", (4,))),
        ("s=", Tensor("s", ())),
        ("s=[2,3]", Tensor("s", (2, 3))),
    ],
)
def test_tensor_flags(text: str, expected: Tensor) -> None:
    assert parse_tensor(text, "--input") == expected


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("x", "expected NAME=D1,D2"),
        ("x=1,a", "comma-separated integers"),
        ("x=0,3", ">= 1"),
        ("1x=3", "expected NAME"),
    ],
)
def test_bad_tensor_flags(text: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        parse_tensor(text, "--input")


def test_attr_flags() -> None:
    assert parse_attr("stride=2") == ("stride", 2)
    assert parse_attr("eps=1e-5") == ("eps", 1e-5)
    assert parse_attr("mode=same") == ("mode", "same")
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_attr("stride")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"name": "2conv"}, "NAME"),
        ({"forward": "conv.forward"}, "--forward"),
        ({"inputs": ()}, "at least one --input"),
        ({"parameters": (Tensor("x", (2,)),)}, "given twice: x"),
        ({"dtypes": ("float8",)}, "--dtype"),
    ],
)
def test_bad_scaffolds(change: dict, pattern: str) -> None:  # type: ignore[type-arg]
    base = {"name": "l", "forward": "m:f", "backward": "m:b", "inputs": (Tensor("x", (2,)),)}
    with pytest.raises(UsageError, match=pattern):
        render(Scaffold(**{**base, **change}))


_ident = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    shapes=st.lists(st.lists(st.integers(1, 9), max_size=4), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from(["float16", "float32", "float64"]), min_size=1, max_size=3, unique=True),
    convention=st.sampled_from(["functional", "cached"]),
    description=st.text(max_size=30),
)
def test_any_valid_flags_give_a_spec_that_validates(
    name: str, shapes: list[list[int]], dtypes: list[str], convention: str, description: str
) -> None:
    tensors = tuple(Tensor(f"t{i}", tuple(s)) for i, s in enumerate(shapes))
    s = Scaffold(
        name, "pkg.mod:fwd", "pkg.mod:bwd", tensors[:1], tensors[1:], tuple(dtypes), convention, description
    )
    try:
        text = render(s)
    except UsageError as exc:  # only what the schema refuses of a description (control characters)
        assert "not valid" in str(exc)
        return
    assert validate_raw(load_spec_text(text, Path("s.yaml"))) == []


def test_unknown_device_in_an_id_is_refused() -> None:
    linear = parse_spec(SPECS / "linear.yaml")
    with pytest.raises(UsageError, match="no device 'bogus'"):
        find_plan("linear[float32,random,bogus]::w", [linear])
    with pytest.raises(UsageError, match="no device 'tpu'"):
        find_plan("linear[float32,random]::device.tpu", [linear])


def test_values_read_back_as_written(tmp_path: Path) -> None:
    s = Scaffold(
        "l",
        "m:f",
        "m:b",
        (Tensor("x", (2,)),),
        attrs=(("a", float("nan")), ("b", float("-inf")), ("c", "1e-5")),
        description="two\nlines",
    )
    raw = load_spec_text(render(s), Path("l.yaml"))
    attrs = raw.data["attrs"]
    assert attrs["a"] != attrs["a"] and attrs["b"] == float("-inf") and attrs["c"] == "1e-5"
    assert raw.data["description"] == "two\nlines"
