"""Stage 2: schema and semantic validation of a RawSpec, every problem located.

The JSON Schema (schemas/spec.schema.json) is the one definition of the format; the
semantic rules here are the ones a schema cannot say (names that refer to each other,
values exact in a dtype, files that must exist).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from specgrad.config import Config
from specgrad.errors import SpecError, SpecIssue, did_you_mean
from specgrad.loader import JsonPath, RawSpec, load_extended, with_defaults
from specgrad.model import Spec, spec_from_validated
from specgrad.semantics import semantic_issues

_SOURCE_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "spec.schema.json"
_OBJECT_ONLY_FILLS = ("constant", "npy", "integers")


def schema_text() -> str:
    """The spec JSON Schema: inside the installed package, else from the source tree."""
    packaged = resources.files("specgrad") / "schemas" / "spec.schema.json"
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return _SOURCE_SCHEMA.read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_text()))


def parse_spec(path: Path | str, config: Config | None = None) -> Spec:
    """load -> validate -> model. Raises SpecError carrying every located issue. A project
    `config` supplies defaults (its tolerances) under what the spec sets itself."""
    raw = load_extended(path)
    if config is not None and config.tolerances:
        raw = with_defaults(raw, {"tolerances": config.tolerance_defaults()}, config.location())
    issues = list(validate_raw(raw))
    if issues:
        raise SpecError(issues)
    return spec_from_validated(raw)


def validate_raw(raw: RawSpec) -> list[SpecIssue]:
    issues = schema_issues(raw)
    if not issues:
        issues = list(semantic_issues(raw))
    return sorted(set(issues), key=lambda i: (i.location.line, i.location.column, i.field))


# --- schema -------------------------------------------------------------------------


def schema_issues(raw: RawSpec) -> list[SpecIssue]:
    if not isinstance(raw.data, dict):
        return [raw.issue((), f"a spec is a YAML mapping, got {_kind(raw.data)}")]
    version = raw.data.get("specgrad")
    if "specgrad" in raw.data and version != 1:
        return [
            raw.issue(
                ("specgrad",), f"unsupported spec format version {version!r}: this specgrad reads version 1"
            )
        ]
    out: list[SpecIssue] = []
    for error in _validator().iter_errors(raw.data):
        out.extend(_from_schema_error(raw, _leaf(error)))
    return out


def _leaf(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For anyOf/oneOf, the sub-error that best explains the failure."""
    while error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is None:
            break
        error = best
    return error


def _from_schema_error(raw: RawSpec, error: jsonschema.ValidationError) -> Iterator[SpecIssue]:
    path: JsonPath = tuple(error.absolute_path)
    kw = str(error.validator)
    inst: Any = error.instance
    want: Any = error.validator_value
    schema: Any = error.schema
    if kw == "additionalProperties" and isinstance(inst, dict):
        known = list((schema.get("properties") or {}).keys())
        for key in inst:
            if key not in known:
                yield raw.issue(
                    (*path, key),
                    f"unknown field '{key}'{did_you_mean(key, known)} (expected one of: {', '.join(known)})",
                    key=True,
                )
        return
    if kw == "required":
        for name in want:
            if isinstance(inst, dict) and name not in inst:
                yield raw.issue(
                    path, f"missing required field '{name}'{_required_hint(path, name)}", key=True
                )
        return
    if kw == "dependentRequired" and isinstance(inst, dict):
        for key, needs in want.items():
            for name in needs:
                if key in inst and name not in inst:
                    yield raw.issue(
                        (*path, key),
                        f"'{key}' needs a '{name}' beside it: a hand-set tolerance replaces the error "
                        "model, so say why (it shows in review and in the reports)",
                        key=True,
                    )
        return
    if "propertyNames" in error.absolute_schema_path:
        yield raw.issue(
            (*path, inst),
            f"invalid name {inst!r}: expected an identifier "
            "(letters, digits and '_', not starting with a digit)",
            key=True,
        )
        return
    yield raw.issue(path, _message(kw, inst, want, error, path))


def _message(kw: str, inst: Any, want: Any, error: jsonschema.ValidationError, path: JsonPath) -> str:
    got = f"got {_kind(inst)} {inst!r}"
    if kw == "type" and path[-1:] == ("device",):
        return f"expected cpu, gpu, both or a list of cpu and gpu, {got}"
    if kw == "type":
        return f"expected {_type_name(want)}, {got}"
    if kw == "enum":
        choices = [str(c) for c in want]
        hint = did_you_mean(str(inst), choices) if isinstance(inst, str) else ""
        if "fill" in path and inst in _OBJECT_ONLY_FILLS:
            hint = f" ('{inst}' needs the mapping form: {{kind: {inst}, ...}})"
        return f"expected one of {', '.join(choices)}; {got}{hint}"
    if kw == "const":
        return f"expected {want!r}, {got}"
    if kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kw]
        return f"expected a value {op} {want}, {got}"
    if kw == "pattern":
        if ":" in want:
            return f"expected an import string 'package.module:qualname', {got}"
        return f"expected an identifier (letters, digits and '_', not starting with a digit), {got}"
    if kw in ("minItems", "minProperties", "minLength"):
        return f"must not be empty, {got}"
    if kw == "uniqueItems":
        return f"entries must be unique, {got}"
    return f"{error.message}"


def _required_hint(path: JsonPath, name: str) -> str:
    if path == () and name in ("forward", "backward"):
        return " (the functional and cached conventions name forward and backward import strings)"
    if path == () and name == "layer":
        return " (convention: layer needs a layer: block with the class to construct)"
    return ""


def _kind(value: Any) -> str:
    return {
        dict: "mapping",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _type_name(want: Any) -> str:
    names = want if isinstance(want, list) else [want]
    words = {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
    }
    return " or ".join(words.get(str(n), str(n)) for n in names)
