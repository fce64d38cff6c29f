"""Spec folders that installed packages ship, found through the entry point group
`specgrad.specs` (`specgrad validate --from-package NAME`).

An entry point's value is a package (`mylayers.specs`: its folder holds the specs) or
`module:attribute` naming a path, or a function returning one. A package is located
without running its own code (Python imports its parent packages, `mylayers`, to find
it); an attribute is read by importing its module.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from specgrad.errors import UsageError, did_you_mean

ENTRY_POINT_GROUP = "specgrad.specs"


def registered() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def spec_folder(name: str) -> Path:
    """The folder of specs the package registered as `name` (UsageError if none)."""
    known = registered()
    ep = known.get(name)
    if ep is None:
        names = ", ".join(sorted(known)) or "none"
        raise UsageError(
            f"--from-package {name}: no installed package registers specs as '{name}'"
            f"{did_you_mean(name, list(known))} (entry point group {ENTRY_POINT_GROUP}; registered: {names})"
        )
    try:
        folder = _located(ep)
    except Exception as exc:  # noqa: BLE001 - third-party code and metadata
        raise UsageError(
            f"--from-package {name}: its entry point {ep.value!r} does not give a folder: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not folder.is_dir():
        raise UsageError(f"--from-package {name}: {folder} (from entry point {ep.value!r}) is not a folder")
    return folder


def _located(ep: metadata.EntryPoint) -> Path:
    if ":" in ep.value:
        obj = ep.load()
        return Path(obj() if callable(obj) else obj)
    found = importlib.util.find_spec(ep.value)
    if found is None:
        raise ModuleNotFoundError(f"no module named {ep.value!r}")
    if found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations)))
    if found.origin is None:
        raise ModuleNotFoundError(f"{ep.value!r} has no location on disk")
    return Path(found.origin).parent
