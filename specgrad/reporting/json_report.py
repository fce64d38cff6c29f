"""Machine-readable report: every check with its figures, every spec error with its location."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from specgrad import __version__
from specgrad.results import CheckResult, RunSummary, Status

FORMAT_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite figures become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _check(r: CheckResult, summary: RunSummary) -> dict[str, Any]:
    out = r.to_dict()
    if r.check_id in summary.positions:
        out["position"] = summary.positions[r.check_id]
    return out


def _shard(summary: RunSummary) -> dict[str, Any]:
    s = summary.shard
    assert s is not None
    return {
        "index": s.index,
        "count": s.count,
        "checks": s.checks,
        "selection": s.selection,
        "complete": s.complete,
    }


class JsonReporter:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def render(self, summary: RunSummary) -> str:
        doc = {
            "format": FORMAT_VERSION,
            "specgrad": __version__,
            "environment": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "devices": summary.devices,
            },
            "exit_code": summary.exit_code,
            "interrupted": summary.interrupted,
            **({"signal": "SIGTERM" if summary.signal == 15 else "SIGINT"} if summary.interrupted else {}),
            "summary": {
                "passed": summary.count(Status.PASS),
                "failed": summary.count(Status.FAIL),
                "errors": summary.count(Status.ERROR),
                "timeouts": summary.count(Status.TIMEOUT),
                "skipped": summary.count(Status.SKIP),
                "spec_errors": len(summary.spec_errors),
            },
            **({"shard": _shard(summary)} if summary.shard else {}),
            "notes": summary.notes,
            "frameworks": summary.frameworks,
            "internal_errors": [
                {"file": str(i.location.file), "message": i.message} for i in summary.internal_errors
            ],
            "spec_errors": [
                {
                    "file": str(i.location.file),
                    "line": i.location.line,
                    "column": i.location.column,
                    "field": i.field,
                    "message": i.message,
                }
                for i in summary.spec_errors
            ],
            "checks": [_check(r, summary) for r in summary.results],
        }
        return json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n"

    def write(self, summary: RunSummary) -> None:
        from specgrad.reporting.atomic import write_atomic

        write_atomic(self.path, self.render(summary))
