"""Resolve `package.module:qualname` import strings, located at the spec line that named them.

A spec's own folder is searched first, so a team's layer code next to its specs works
without being installed. If a module of the same name was already imported from another
folder (two spec folders each with a `layers.py`), the stale copy is dropped first.
"""

from __future__ import annotations

import difflib
import importlib
import sys
import traceback
from pathlib import Path
from typing import Any

from specgrad.errors import SpecError
from specgrad.model import ImportRef


def resolve(ref: ImportRef, folder: Path) -> Any:
    module_name, _, qualname = ref.target.partition(":")
    module = _import_module(ref, module_name, folder.resolve())
    obj: Any = module
    for i, part in enumerate(qualname.split(".")):
        if not hasattr(obj, part):
            owner = module_name if i == 0 else ".".join([module_name, *qualname.split(".")[:i]])
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpecError.at(ref.location, ref.field, f"'{owner}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError.at(
            ref.location, ref.field, f"'{ref.target}' is a {type(obj).__name__}, not a callable"
        )
    return obj


def _import_module(ref: ImportRef, name: str, folder: Path) -> Any:
    folder_str = str(folder)
    if folder_str not in sys.path:
        sys.path.insert(0, folder_str)
    _drop_shadowed(name.split(".")[0], folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name) and (exc.name == name or name.startswith(exc.name + ".")):
            raise SpecError.at(
                ref.location,
                ref.field,
                f"cannot import module '{name}': no module named '{exc.name}' "
                f"(searched {folder} and installed packages)",
            ) from None
        raise SpecError.at(ref.location, ref.field, _import_failure(name, exc)) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error in user module code
        raise SpecError.at(ref.location, ref.field, _import_failure(name, exc)) from None


def _drop_shadowed(top: str, folder: Path) -> None:
    """Forget a module imported earlier from elsewhere if this spec's folder provides it."""
    local = folder / f"{top}.py", folder / top / "__init__.py"
    loaded = sys.modules.get(top)
    if loaded is None or not any(p.is_file() for p in local):
        return
    origin = getattr(loaded, "__file__", None)
    if origin and Path(origin).resolve() in {p.resolve() for p in local}:
        return
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]
    importlib.invalidate_caches()


def _import_failure(name: str, exc: BaseException) -> str:
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = "".join(frames[-4:]).rstrip()
    return f"importing module '{name}' raised {type(exc).__name__}: {exc}\n{tail}"
