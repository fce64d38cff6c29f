"""Stage 1: read a YAML spec into plain data plus a side table of source locations.

PyYAML speaks YAML 1.1, where `1e-5` is a string, `yes` a boolean, `010` octal and a
repeated key silently wins. Specs are written by hand from configs that assume YAML 1.2,
so scalars are resolved with the YAML 1.2 core schema and duplicate keys are errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specgrad.errors import Location, SpecError, SpecIssue

JsonPath = tuple[str | int, ...]

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_MAX_DEPTH = 64


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose implicit scalar types follow the YAML 1.2 core schema."""


_Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789")),
    ("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"]),
):
    _Yaml12Loader.add_implicit_resolver(_tag, _regexp, _first)


def format_path(path: JsonPath) -> str:
    """`('inputs', 'x', 'shape', 1)` -> `inputs.x.shape[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class RawSpec:
    """A parsed but not yet validated spec: plain data and where each value came from."""

    path: Path
    data: Any
    locations: Mapping[JsonPath, Location] = field(repr=False)
    key_locations: Mapping[JsonPath, Location] = field(repr=False, default_factory=dict)

    def locate(self, path: JsonPath, *, key: bool = False) -> Location:
        """Location of the value at `path`, or of its nearest located ancestor."""
        if key and path in self.key_locations:
            return self.key_locations[path]
        for n in range(len(path), -1, -1):
            loc = self.locations.get(tuple(path[:n]))
            if loc is not None:
                return loc
        return Location(self.path)

    def issue(self, path: JsonPath, message: str, *, key: bool = False) -> SpecIssue:
        return SpecIssue(self.locate(path, key=key), format_path(path), message)


def load_spec(path: Path | str) -> RawSpec:
    """Read one spec file. Raises SpecError (located) for unreadable files and bad YAML."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise SpecError.at(Location(path), "", f"cannot read spec file: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start : exc.start + 1].hex()
        message = f"cannot read spec file: byte 0x{byte} is not UTF-8 text (save the spec as UTF-8)"
        raise SpecError.at(Location(path, line, column), "", message) from None
    return load_spec_text(text, path)


def load_spec_text(text: str, path: Path) -> RawSpec:
    try:
        nodes = list(yaml.compose_all(text, Loader=_Yaml12Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpecError.at(loc, "", f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no mark, a position
        before = text[: exc.position]
        loc = Location(path, before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
        code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
        raise SpecError.at(loc, "", f"invalid YAML: {exc.reason}: character #x{code:04x}") from None
    except yaml.YAMLError as exc:
        raise SpecError.at(Location(path), "", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise SpecError.at(Location(path, 1, 1), "", "invalid YAML: the document nests too deeply") from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise SpecError.at(Location(path, 1, 1), "", "empty spec file (expected a YAML mapping)")
    if len(nodes) > 1:
        second = nodes[1].start_mark
        raise SpecError.at(
            Location(path, second.line + 1, second.column + 1),
            "",
            "a spec file holds one YAML document; found a second one here",
        )
    builder = _Builder(path)
    try:
        data = builder.build(nodes[0], ())
    except RecursionError:
        raise SpecError.at(Location(path, 1, 1), "", "the document nests too deeply") from None
    except _TooLarge as exc:
        raise SpecError([exc.issue]) from None
    if builder.issues:
        raise SpecError(builder.issues)
    return RawSpec(path, data, builder.locations, builder.key_locations)


#: the only tags a mapping or a list may carry: no tag constructs an object
_PLAIN_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


#: values a spec may expand to: aliases repeat a node wherever they point, so a small file
#: can stand for an exponential number of them ("billion laughs"); a real spec has hundreds
MAX_VALUES = 100_000


class _TooLarge(Exception):
    def __init__(self, issue: SpecIssue) -> None:
        self.issue = issue


class _Builder:
    """Turns a composed node tree into plain data, recording each node's location."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.built = 0
        self.locations: dict[JsonPath, Location] = {}
        self.key_locations: dict[JsonPath, Location] = {}
        self.issues: list[SpecIssue] = []
        self._active: set[int] = set()

    def _loc(self, node: yaml.Node) -> Location:
        return Location(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def _fail(self, node: yaml.Node, path: JsonPath, message: str) -> None:
        self.issues.append(SpecIssue(self._loc(node), format_path(path), message))

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.built += 1
        if self.built > MAX_VALUES:
            message = f"the document expands to more than {MAX_VALUES} values (aliases repeating aliases?)"
            raise _TooLarge(SpecIssue(self._loc(node), format_path(path), message))
        self.locations[path] = self._loc(node)
        if len(path) > _MAX_DEPTH or id(node) in self._active:
            self._fail(node, path, "document nests too deeply (recursive alias?)")
            return None
        self._active.add(id(node))
        try:
            plain = _PLAIN_TAGS.get(type(node))
            if plain is not None and node.tag != plain:
                kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
                self._fail(
                    node, path, f"unsupported YAML tag {node.tag!r} on a {kind} (specs are plain YAML)"
                )
                return None
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        # merge sources first: the mapping's own keys then record their locations over them
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.update(self._merge_source(value_node, path))
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, path, "mapping keys must be plain strings")
                continue
            key = str(self._scalar(key_node, path))
            child = (*path, key)
            if key in out:
                first = self.key_locations[child]
                self._fail(key_node, child, f"duplicate key '{key}' (first defined at line {first.line})")
                continue
            self.key_locations[child] = self._loc(key_node)
            out[key] = self.build(value_node, child)
        for key, value in merged.items():
            out.setdefault(key, value)
        return out

    def _merge_source(self, node: yaml.Node, path: JsonPath) -> dict[str, Any]:
        """`<<: *base` merges keys the mapping does not set itself (YAML merge key)."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                self._fail(source, path, "'<<' merges mappings only")
                continue
            own = self.locations.get(path)
            built = self.build(source, path)  # same recursion guard and issue list
            if own is not None:
                self.locations[path] = own
            if isinstance(built, dict):
                merged.update(built)
        return merged

    def _scalar(self, node: yaml.Node, path: JsonPath) -> Any:
        tag, value = node.tag, node.value
        if tag == "tag:yaml.org,2002:str":
            return value
        if tag == "tag:yaml.org,2002:null" and _NULL.match(value):
            return None
        if tag == "tag:yaml.org,2002:bool" and _BOOL.match(value):
            return value.lower() == "true"
        if tag == "tag:yaml.org,2002:int" and _INT.match(value):
            return int(value, 0) if value[:2] in ("0o", "0x") else int(value)
        if tag == "tag:yaml.org,2002:float" and _FLOAT.match(value):
            low = value.lower()
            return float(low.replace(".", "")) if low.endswith((".inf", ".nan")) else float(value)
        self._fail(node, path, f"unsupported YAML tag {tag!r} for value {value!r}")
        return None


def load_extended(path: Path | str) -> RawSpec:
    """`load_spec`, with the chain of `extends:` bases merged in (base first). Mappings
    merge key by key, anything else the spec gives replaces the base's, and null removes
    a key; every value keeps the location it was written at, in whichever file. The
    base's `abstract: true` is not inherited."""
    return _extended(load_spec(path), ())


def _extended(raw: RawSpec, chain: tuple[Path, ...]) -> RawSpec:
    data = raw.data
    if not isinstance(data, dict) or not isinstance(data.get("extends"), str):
        return raw  # no base (a malformed `extends` is the schema's to report)
    here = raw.path.resolve()
    where = raw.locate(("extends",))
    try:
        base_path = (raw.path.parent / data["extends"]).resolve()
        base_path.is_file()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise SpecError.at(where, "extends", f"not a usable file path: {exc}") from None
    if base_path in (*chain, here):
        cycle = " -> ".join(str(p) for p in (*chain, here, base_path))
        raise SpecError.at(where, "extends", f"spec bases extend each other in a cycle: {cycle}")
    if not base_path.is_file():
        raise SpecError.at(
            where, "extends", f"no base spec file {base_path} (paths are relative to this file)"
        )
    base = _extended(load_spec(base_path), (*chain, here))
    if not isinstance(base.data, dict):
        raise SpecError.at(where, "extends", f"the base spec {base_path} is not a YAML mapping")
    own = {k: v for k, v in data.items() if k != "extends"}
    inherited = {k: v for k, v in base.data.items() if k != "abstract"}
    merged = _merge(inherited, own)
    locations = {p: loc for p, loc in base.locations.items() if not _overridden(p, own)}
    keys = {p: loc for p, loc in base.key_locations.items() if not _overridden(p, own)}
    locations.update(raw.locations)
    keys.update(raw.key_locations)
    return RawSpec(raw.path, merged, locations, keys)


def with_defaults(raw: RawSpec, defaults: dict[str, Any], where: Location) -> RawSpec:
    """The spec on top of `defaults` (a project's configuration, written at `where`), merged
    as a base is: the spec's own values win, key by key."""
    if not defaults or not isinstance(raw.data, dict):
        return raw
    merged = _merge(defaults, raw.data)
    locations = {p: where for p in _paths(defaults) if not _overridden(p, raw.data)}
    locations.update(raw.locations)
    return RawSpec(raw.path, merged, locations, raw.key_locations)


def _paths(data: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    if not isinstance(data, dict):
        return [prefix]
    return [prefix, *(p for k, v in data.items() for p in _paths(v, (*prefix, k)))]


def _merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in own.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _overridden(path: JsonPath, own: Any) -> bool:
    """Whether the spec itself replaces the value at `path` (or a value above it), so the
    base's location there no longer applies."""
    node = own
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return False
