"""`specgrad new`: a commented spec from a few flags, checked against the schema and the
semantic rules before it is written, so what it writes always passes `specgrad lint`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specgrad.errors import SpecError, UsageError
from specgrad.loader import load_spec_text
from specgrad.numerics.tolerance import FLOAT_DTYPES

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMPORT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Scaffold:
    name: str
    forward: str
    backward: str
    inputs: tuple[Tensor, ...]
    parameters: tuple[Tensor, ...] = ()
    dtypes: tuple[str, ...] = ("float32", "float64")
    convention: str = "functional"
    description: str = ""
    framework: str = "numpy"
    attrs: tuple[tuple[str, Any], ...] = ()


def parse_tensor(text: str, option: str) -> Tensor:
    """`x=1,3,8,8` (or `x=` / `x=scalar` for a scalar) -> Tensor."""
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not _IDENT.match(name):
        raise UsageError(f"{option} {text!r}: expected NAME=D1,D2,... such as x=1,3,8,8")
    dims = dims.strip()
    if dims in ("", "scalar", "[]"):
        return Tensor(name, ())
    try:
        shape = tuple(int(d) for d in dims.strip("[]()").split(","))
    except ValueError:
        raise UsageError(f"{option} {text!r}: the shape must be comma-separated integers") from None
    if any(d < 1 for d in shape):
        raise UsageError(f"{option} {text!r}: every dimension must be >= 1")
    return Tensor(name, shape)


def check(s: Scaffold) -> None:
    """The flags' own errors, named by flag (before any YAML exists)."""
    if not _NAME.match(s.name):
        raise UsageError(
            f"NAME {s.name!r}: expected letters, digits, '_', '.', '-', not starting with a digit"
        )
    for option, ref in (("--forward", s.forward), ("--backward", s.backward)):
        if not (_IMPORT.match(ref) or (option == "--backward" and ref == "autograd")):
            raise UsageError(f"{option} {ref!r}: expected an import string package.module:function")
    if not s.inputs:
        raise UsageError("give at least one --input NAME=SHAPE")
    names = [t.name for t in (*s.inputs, *s.parameters)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"tensor name(s) given twice: {', '.join(twice)}")
    for d in s.dtypes:
        if d not in FLOAT_DTYPES:
            raise UsageError(f"--dtype {d!r}: expected one of {', '.join(FLOAT_DTYPES)}")


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


#: the column the comments of `specgrad new`'s lines start at
COMMENT_COLUMN = 36


def _c(code: str, comment: str) -> str:
    return f"{code.ljust(COMMENT_COLUMN - 1)} # {comment}"


def _tensors(section: str, tensors: Sequence[Tensor], comment: str) -> list[str]:
    if not tensors:
        return []
    return [_c(f"{section}:", comment), *(f"  {t.name}: {{shape: {_shape(t)}}}" for t in tensors)]


def parse_attr(text: str) -> tuple[str, Any]:
    """`stride=2` -> ("stride", 2): the value read as a YAML scalar (numbers, true/false,
    strings), as it will be read back from the spec."""
    key, sep, value = text.partition("=")
    if not sep or not _IDENT.match(key.strip()):
        raise UsageError(f"--attr {text!r}: expected NAME=VALUE such as stride=2")
    try:  # read as the spec will read it back (YAML 1.2: 1e-5 is a number)
        parsed = load_spec_text(f"value: {value}\n", Path("--attr")).data["value"] if value.strip() else None
    except SpecError:
        raise UsageError(f"--attr {text!r}: the value is not a YAML scalar") from None
    if isinstance(parsed, (dict, list)) or parsed is None:
        raise UsageError(f"--attr {text!r}: give a number, true/false or a string; edit the file for more")
    return key.strip(), parsed


def render(s: Scaffold) -> str:
    check(s)
    description = s.description or f"{s.name} layer (say what it computes: it heads the reports)."
    call = ", ".join(t.name for t in (*s.inputs, *s.parameters))
    if s.convention == "cached":
        signature = [
            f"# forward:  {s.forward}({call}, **attrs) -> (outputs, cache)",
            f"# backward: {s.backward}(grad_out, cache) -> one gradient per tensor, in this order",
        ]
    else:
        signature = [
            f"# forward:  {s.forward}({call}, **attrs) -> output (or a tuple of outputs)",
            f"# backward: {s.backward}(grad_out, {call}, **attrs) -> one gradient per tensor, in this order",
        ]
    lines = [
        f"# specgrad spec for {s.name}, written by `specgrad new`.",
        "#   specgrad lint THIS_FILE      checks it against the schema; imports nothing",
        "#   specgrad validate THIS_FILE  runs the gradient and contract checks",
        "# Editors: `specgrad schema > spec.schema.json` and a first line",
        "#   # yaml-language-server: $schema=spec.schema.json",
        "# validate as you type. Every field: README, 'Spec reference'.",
        *signature,
        "specgrad: 1",
        _c(f"name: {s.name}", f"first part of every check id: {s.name}[DTYPE,CASE]::TARGET"),
        f"description: {_quoted(description)}",
        _c(f"convention: {s.convention}", "functional | cached | layer"),
    ]
    if s.framework != "numpy":
        lines.append(_c(f"framework: {s.framework}", "what the callables take and return"))
    lines += [
        f"forward: {s.forward}",
        f"backward: {s.backward}",
        *_tensors("inputs", s.inputs, "passed positionally, in this order, then the parameters"),
        *_tensors("parameters", s.parameters, "their gradients follow the inputs' in backward's result"),
        "# a tensor's values come from its fill (default: seeded normal); e.g. for a log's domain",
        "#   x: {shape: [...], fill: {kind: uniform, low: 0.1, high: 2}}",
        "# and for integer labels",
        "#   y: {shape: [...], dtype: int64, fill: {kind: integers, high: 10}, grad: false}",
        _c(f"attrs: {_attrs(s.attrs)}", "keyword arguments of forward (and backward)"),
        _c(f"dtypes: [{', '.join(s.dtypes)}]", "float16 too, if the layer takes it"),
        _c("cases: [random, wide, special]", "seeded normal, its tails, FP special values"),
        "seed: 42",
        _c("# kinks: subgradient", "at a kink: between the one-sided derivatives"),
        "# tolerances are derived from an error model; set them only with a reason:",
        "#   tolerances: {float32: {rtol: 1e-3, atol: 1e-5, reason: why the model does not fit}}",
    ]
    text = "\n".join(lines) + "\n"
    _lint(text, s)
    return text


def _attrs(attrs: Sequence[tuple[str, Any]]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in attrs) + "}"


def _scalar(value: Any) -> str:
    """A YAML 1.2 scalar that reads back as `value` (JSON's NaN and Infinity do not)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return json.dumps(value)


def _quoted(text: str) -> str:
    """A double-quoted YAML scalar: JSON's escapes are YAML's, so newlines survive."""
    return json.dumps(text)


def _lint(text: str, s: Scaffold) -> None:
    """What `specgrad lint` checks; a failure here is specgrad's bug, or a flag value the
    schema refuses (reported with the schema's words)."""
    from specgrad.validate import validate_raw

    try:
        raw = load_spec_text(text, Path(f"{s.name}.yaml"))
        issues = validate_raw(raw)
    except SpecError as exc:
        issues = list(exc.issues)
    if issues:
        raise UsageError(
            "the spec these flags describe is not valid: " + "; ".join(i.message for i in issues)
        )
