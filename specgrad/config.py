"""`[tool.specgrad]` in pyproject.toml: a project's defaults for the command line and the
pytest plugin. Found as pytest and ruff find theirs: the nearest pyproject.toml with a
`[tool.specgrad]` table, walking up from the current folder. Command-line flags win over
it. Each setting acts as its flag does (`seed` replaces every spec's seed, `dtypes` selects
among each spec's dtypes); `tolerances` are defaults under what a spec sets itself.

    [tool.specgrad]
    paths = ["specs"]                 # what `specgrad validate` checks when given no paths
    dtypes = ["float32", "float64"]   # only these of each spec's dtypes
    device = "cpu"                    # cpu | gpu | both | sim | a comma list
    mode = "default"                  # default | fast | per-element
    seed = 42                         # every spec's seed
    jobs = 4                          # worker processes
    max_memory = "1G"
    max_elements = 100000
    timeout = 600                     # seconds per check (a spec's timeout: wins)
    isolate = true                    # checks in worker processes even with jobs = 1
    scheduler = "tcp://10.0.0.5:8786" # --scheduler (executor = "dask" without one: a LocalCluster)
    import_roots = ["src"]            # folders put on sys.path for the specs' import strings
    [tool.specgrad.tolerances.float32]
    epsilon = 1e-3                    # the step; rtol/atol replace the error model, with a reason
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specgrad.errors import Location, SpecError, SpecIssue, UsageError, did_you_mean
from specgrad.numerics.tolerance import FLOAT_DTYPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_MODES = ("default", "fast", "per-element")
#: the longest timeout accepted, in seconds (a week; the spec schema's timeout maximum too)
MAX_TIMEOUT = 604800
#: the keys of [tool.specgrad]
SETTINGS = (
    "paths",
    "dtypes",
    "device",
    "mode",
    "seed",
    "jobs",
    "max_memory",
    "max_elements",
    "timeout",
    "isolate",
    "executor",
    "scheduler",
    "import_roots",
    "tolerances",
)
_TOLERANCE_KEYS = ("epsilon", "rtol", "atol", "reason")


@dataclass(frozen=True)
class Config:
    """The project's settings; None (or empty) where it sets nothing."""

    source: Path | None = None  # the pyproject.toml they came from
    paths: tuple[Path, ...] = ()
    dtypes: tuple[str, ...] | None = None
    device: str | None = None
    mode: str | None = None
    seed: int | None = None
    jobs: int | None = None
    max_memory: int | None = None
    max_elements: int | None = None
    timeout: float | None = None
    isolate: bool | None = None
    executor: str | None = None
    scheduler: str | None = None
    import_roots: tuple[Path, ...] = ()
    #: per dtype, defaults for the specs' `tolerances:` (a spec's own values win field by
    #: field), as ((dtype, ((field, value), ...)), ...): hashable, for the workers' caches
    tolerances: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def tolerance_defaults(self) -> dict[str, dict[str, Any]]:
        return {dtype: dict(given) for dtype, given in self.tolerances}

    def location(self) -> Location:
        """Where the settings are written (for the specs' tolerances taken from them)."""
        return Location(self.source) if self.source else Location(Path("pyproject.toml"))

    def use_import_roots(self) -> None:
        """Put the import roots first on sys.path (worker processes inherit it)."""
        for root in reversed(self.import_roots):
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))


def find(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.specgrad] table, from `start` upward."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _has_table(candidate):
            return candidate
    return None


def _has_table(path: Path) -> bool:
    """Whether the file has a [tool.specgrad] table (in any TOML spelling), or names
    specgrad but cannot be read as TOML: then it is the file meant, and `load` reports
    what is wrong with it. Files that never mention specgrad are walked past unparsed."""
    try:
        raw = path.read_bytes()
    except OSError:
        return False
    if b"specgrad" not in raw:
        return False
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True
    tool = data.get("tool")
    return isinstance(tool, dict) and "specgrad" in tool


def load(path: Path | None = None, *, start: Path | None = None) -> Config:
    """The settings in `path` (else the nearest found from `start`); Config() where none.
    Raises SpecError, located at the pyproject.toml line, for settings that are wrong."""
    path = path or find(start)
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the configuration: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError.at(Location(path), "", f"not UTF-8 text (TOML is UTF-8): {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError.at(Location(path), "", f"invalid TOML: {exc}") from None
    table = data.get("tool", {}).get("specgrad")
    if table is None:
        return Config(source=path)
    return _parse(table, path, text)


def _parse(table: Any, path: Path, text: str) -> Config:
    folder = path.parent
    issues: list[SpecIssue] = []

    def issue(key: str, message: str) -> None:
        issues.append(SpecIssue(Location(path, _line(text, key)), f"tool.specgrad.{key}", message))

    if not isinstance(table, dict):
        raise SpecError.at(Location(path), "tool.specgrad", "expected a table")
    known = SETTINGS
    for key in table:
        if key not in known:
            issue(
                key,
                f"unknown setting '{key}'{did_you_mean(key, known)} (expected one of: {', '.join(known)})",
            )
    out: dict[str, Any] = {"source": path}
    for key in ("paths", "import_roots"):
        if key in table:
            value = table[key]
            if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
                issue(key, f"expected a list of folder or file paths, got {value!r}")
                continue
            missing = [v for v in value if not (folder / v).exists()]
            if missing:
                issue(key, f"no such file or folder: {', '.join(missing)} (paths are relative to {folder})")
            else:
                out[key] = tuple((folder / v) for v in value)
    if "dtypes" in table:
        value = table["dtypes"]
        if not (isinstance(value, list) and value and all(v in FLOAT_DTYPES for v in value)):
            issue("dtypes", f"expected a non-empty list of {', '.join(FLOAT_DTYPES)}, got {value!r}")
        else:
            out["dtypes"] = tuple(value)
    if "device" in table:
        from specgrad.backends import parse_devices

        try:
            if not isinstance(table["device"], str):
                raise UsageError(f"expected a string such as cpu, gpu, both, got {table['device']!r}")
            parse_devices(table["device"])
            out["device"] = table["device"]
        except UsageError as exc:
            issue("device", str(exc))
    if "mode" in table:
        if table["mode"] not in _MODES:
            issue("mode", f"expected one of {', '.join(_MODES)}, got {table['mode']!r}")
        else:
            out["mode"] = table["mode"]
    for key, low, high in (("seed", 0, 2**32 - 1), ("jobs", 1, None), ("max_elements", 1, None)):
        if key in table:
            value = table[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high and value > high)
            ):
                issue(key, f"expected an integer >= {low}{f' and <= {high}' if high else ''}, got {value!r}")
            else:
                out[key] = value
    if "timeout" in table:
        value = table["timeout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
            issue("timeout", f"expected seconds, a number > 0 and <= {MAX_TIMEOUT}, got {value!r}")
        else:
            out["timeout"] = float(value)
    if "isolate" in table:
        if not isinstance(table["isolate"], bool):
            issue("isolate", f"expected true or false, got {table['isolate']!r}")
        else:
            out["isolate"] = table["isolate"]
    if "executor" in table:
        if table["executor"] not in ("local", "dask"):
            issue("executor", f"expected local or dask, got {table['executor']!r}")
        else:
            out["executor"] = table["executor"]
    if "scheduler" in table:
        if not (isinstance(table["scheduler"], str) and table["scheduler"].strip()):
            issue(
                "scheduler",
                f"expected a Dask scheduler's address such as tcp://host:8786, got {table['scheduler']!r}",
            )
        else:
            out["scheduler"] = table["scheduler"]
    if "max_memory" in table:
        size = parse_size(table["max_memory"])
        if size is None:
            issue(
                "max_memory",
                f'expected a size such as "512M" or "2G" (or bytes), got {table["max_memory"]!r}',
            )
        else:
            out["max_memory"] = size
    if "tolerances" in table:
        tolerances = _tolerances(table["tolerances"], lambda m: issue("tolerances", m))
        if tolerances is not None:
            out["tolerances"] = tuple((d, tuple(sorted(t.items()))) for d, t in sorted(tolerances.items()))
    if issues:
        raise SpecError(issues)
    return Config(**out)


def _tolerances(value: Any, issue: Any) -> dict[str, dict[str, Any]] | None:
    if not isinstance(value, dict):
        issue(f"expected a table of dtypes ({', '.join(FLOAT_DTYPES)}), got {value!r}")
        return None
    out: dict[str, dict[str, Any]] = {}
    for dtype, given in value.items():
        if dtype not in FLOAT_DTYPES:
            issue(f"unknown dtype '{dtype}'{did_you_mean(dtype, FLOAT_DTYPES)}")
            continue
        if not isinstance(given, dict):
            issue(f"{dtype}: expected a table with {', '.join(_TOLERANCE_KEYS)}, got {given!r}")
            continue
        clean: dict[str, Any] = {}
        for key, v in given.items():
            if key not in _TOLERANCE_KEYS:
                issue(f"{dtype}: unknown field '{key}'{did_you_mean(key, _TOLERANCE_KEYS)}")
            elif key == "reason":
                if isinstance(v, str) and v.strip():
                    clean[key] = v
                else:
                    issue(f"{dtype}.reason: expected a non-empty string, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
                issue(f"{dtype}.{key}: expected a positive number, got {v!r}")
            else:
                clean[key] = float(v)
        if ("rtol" in given or "atol" in given) and "reason" not in given:
            issue(f"{dtype}: rtol/atol replace the error model and need a 'reason' beside them")
        out[dtype] = clean
    return out


def parse_size(value: Any) -> int | None:
    """Bytes from 1048576, "512K", "64M", "2G" (binary units); None if it is not a size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", value, re.IGNORECASE)
    if not match or (not match.group(2) and "." in match.group(1)):
        return None  # a byte count is whole
    size = int(float(match.group(1)) * units[match.group(2).upper()])
    return size if size > 0 else None


def _line(text: str, key: str) -> int:
    """The line `key` is set on inside the [tool.specgrad] table (its header's where the
    key cannot be found): tomllib keeps no positions."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"\s*\[\s*tool\s*\.\s*specgrad\b", line)), None
    )
    if start is None:
        return 0
    for i in range(start + 1, len(lines)):
        if re.match(rf"\s*{re.escape(key)}\s*[=.]", lines[i]) or re.match(
            rf"\s*\[\s*tool\s*\.\s*specgrad\s*\.\s*{re.escape(key)}\b", lines[i]
        ):
            return i + 1
        if re.match(r"\s*\[", lines[i]) and not re.match(r"\s*\[\s*tool\s*\.\s*specgrad\b", lines[i]):
            break
    return start + 1
