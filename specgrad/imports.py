"""Resolve `package.module:qualname` import strings, located at the spec line that named them.

A spec's own folder is searched first, so a team's layer code next to its specs works
without being installed. Each spec folder gets its own modules: one with the same name
imported from another folder (two spec folders each with a `layers.py`) is dropped first.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from specgrad.errors import SpecError, did_you_mean
from specgrad.model import ImportRef

#: `package.module:qualname`, nothing else: an import string is looked up, never evaluated
IMPORT_STRING = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


def resolve(ref: ImportRef, folder: Path) -> Any:
    if not IMPORT_STRING.fullmatch(ref.target):
        raise SpecError.at(
            ref.location,
            ref.field,
            f"expected an import string 'package.module:qualname', got {ref.target!r}",
        )
    module_name, _, qualname = ref.target.partition(":")
    module = _import_module(ref, module_name, folder.resolve())
    obj: Any = module
    for i, part in enumerate(qualname.split(".")):
        if not hasattr(obj, part):
            owner = module_name if i == 0 else ".".join([module_name, *qualname.split(".")[:i]])
            hint = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
            raise SpecError.at(ref.location, ref.field, f"'{owner}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError.at(
            ref.location, ref.field, f"'{ref.target}' is a {type(obj).__name__}, not a callable"
        )
    return obj


#: every spec folder seen, and the one specgrad put first on sys.path (only that entry is
#: ever removed again: the user's own sys.path and PYTHONPATH entries are left alone)
_SPEC_FOLDERS: set[str] = set()
_INSERTED: list[str] = []


def _import_module(ref: ImportRef, name: str, folder: Path) -> Any:
    _enter(folder)
    _drop_shadowed(name.split(".")[0], folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
            raise SpecError.at(
                ref.location,
                ref.field,
                f"cannot import module '{name}': no module named '{exc.name}' "
                f"(searched {folder} and installed packages)",
            ) from None
        raise SpecError.at(ref.location, ref.field, _import_failure(name, exc)) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error in user module code
        raise SpecError.at(ref.location, ref.field, _import_failure(name, exc)) from None


def _enter(folder: Path) -> None:
    """Put `folder` first on sys.path (instead of the spec folder before it) and forget every
    module loaded from another spec folder that this one would not load itself: two folders
    with their own `layers.py`, or `helpers.py` their layers import (at import time or when
    called), each get their own. Callables resolved earlier keep their modules."""
    key = str(folder)
    while _INSERTED:
        entry = _INSERTED.pop()
        if entry in sys.path:
            sys.path.remove(entry)  # the first occurrence: the one specgrad put in front
    sys.path.insert(0, key)
    _INSERTED.append(key)
    _SPEC_FOLDERS.add(key)
    prefixes = tuple(f + os.sep for f in _SPEC_FOLDERS)
    for module_name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and origin.startswith(prefixes) and not _provided_by(key, module_name, origin):
            del sys.modules[module_name]
    importlib.invalidate_caches()


def _provided_by(folder: str, module_name: str, origin: str) -> bool:
    """Whether importing `module_name` with `folder` first on sys.path loads `origin`."""
    top = module_name.split(".")[0]
    return origin == os.path.join(folder, f"{top}.py") or origin.startswith(
        os.path.join(folder, top) + os.sep
    )


def _drop_shadowed(top: str, folder: Path) -> None:
    """Forget `top` imported from elsewhere when this spec's folder provides its own."""
    local = [p for p in (folder / f"{top}.py", folder / top / "__init__.py") if p.is_file()]
    origin = getattr(sys.modules.get(top), "__file__", None)
    if not local or origin is None or Path(origin).resolve() in {p.resolve() for p in local}:
        return
    for module in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[module]


def _import_failure(name: str, exc: BaseException) -> str:
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = "".join(frames[-4:]).rstrip()
    return f"importing module '{name}' raised {type(exc).__name__}: {exc}\n{tail}"
