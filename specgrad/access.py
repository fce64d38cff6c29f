"""Access paths into layer objects: `W`, `params.W`, `parameters['W']`, `blocks[0].weight`.

Real layer libraries keep parameters in attributes, in dicts, or in nested objects; a spec
names the place with one small path grammar instead of a per-library adapter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<dot>\.)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | \[\s*(?:(?P<int>-?[0-9]+)|'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))\s*\]
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Step:
    """One hop: `attr` is getattr (falling back to a key on mappings), `item` is subscription."""

    kind: str  # "attr" | "item"
    key: str | int


@dataclass(frozen=True, slots=True)
class AccessPath:
    text: str
    steps: tuple[Step, ...]

    def get(self, root: object) -> Any:
        obj: Any = root
        for i, step in enumerate(self.steps):
            try:
                obj = _get(obj, step)
            except (AttributeError, KeyError, IndexError, TypeError) as exc:
                where = _prefix(self.steps[:i]) or "the layer"
                raise LookupError(
                    f"cannot read '{self.text}': {where} has no {_describe(step)} ({exc!r})"
                ) from None
        return obj

    def set(self, root: object, value: object) -> None:
        parent = AccessPath(self.text, self.steps[:-1]).get(root)
        last = self.steps[-1]
        try:
            as_key = isinstance(parent, MutableMapping) and not hasattr(parent, str(last.key))
            if last.kind == "item" or as_key:
                parent[last.key] = value
            else:
                setattr(parent, str(last.key), value)
        except (AttributeError, KeyError, IndexError, TypeError) as exc:
            raise LookupError(f"cannot set '{self.text}': {exc!r}") from None


def _get(obj: Any, step: Step) -> Any:
    if step.kind == "item":
        return obj[step.key]
    if isinstance(obj, Mapping) and not hasattr(obj, str(step.key)):
        return obj[step.key]
    return getattr(obj, str(step.key))


def _describe(step: Step) -> str:
    return f"attribute '{step.key}'" if step.kind == "attr" else f"item [{step.key!r}]"


def _prefix(steps: tuple[Step, ...]) -> str:
    out = ""
    for s in steps:
        out += f"[{s.key!r}]" if s.kind == "item" else (f".{s.key}" if out else str(s.key))
    return out


def parse_path(text: str) -> AccessPath:
    """Parse an access path; raises ValueError with the offending position."""
    steps: list[Step] = []
    pos, expect_name = 0, True
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or (m.group("dot") and expect_name) or (m.group("name") and not expect_name):
            raise ValueError(f"invalid access path {text!r} at position {pos}")
        if m.group("name"):
            steps.append(Step("attr", m.group("name")))
            expect_name = False
        elif m.group("dot"):
            expect_name = True
        else:
            if expect_name and steps:
                raise ValueError(f"invalid access path {text!r} at position {pos}")
            steps.append(Step("item", _item_key(m)))
            expect_name = False
        pos = m.end()
    if not steps or expect_name:
        raise ValueError(f"invalid access path {text!r}: expected a name at the end")
    if steps[0].kind != "attr":
        raise ValueError(f"invalid access path {text!r}: must start with a name")
    return AccessPath(text, tuple(steps))


def _item_key(m: re.Match[str]) -> str | int:
    if m.group("int") is not None:
        return int(m.group("int"))
    for group in ("sq", "dq", "bare"):
        if m.group(group) is not None:
            return m.group(group)
    raise AssertionError("unreachable")
