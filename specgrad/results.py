"""What a run produces: one CheckResult per check id, and per-file spec errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from specgrad.errors import SpecIssue
from specgrad.numerics.compare import Comparison
from specgrad.numerics.tolerance import Tolerance

EXIT_INTERNAL = 3
EXIT_NOTHING_SELECTED = 5


class Status(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"  # the implementation is wrong: a gradient or a contract does not hold
    ERROR = "ERROR"  # the check could not be carried out: user code raised, or a prerequisite failed
    TIMEOUT = "TIMEOUT"  # the check did not finish within its time limit (--timeout, timeout:)
    SKIP = "SKIP"

    def __str__(self) -> str:
        return self.value

    @property
    def bad(self) -> bool:
        """Whether the status makes the run fail (exit 1)."""
        return self in (Status.FAIL, Status.ERROR, Status.TIMEOUT)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The per-element figures of one element-wise gradient check, on the host in float64
    and shaped like the tensor (NaN where a sample left an element out): what the HTML
    report's heatmaps and `specgrad explain` show. Kept for failing checks (and for every
    check where asked), never written to JSON."""

    tensor: str
    value: np.ndarray  # the tensor at the check point, in the precision the differences ran in
    analytical: np.ndarray
    numerical: np.ndarray
    bound: np.ndarray
    error: np.ndarray  # distance of analytical from the admissible value(s): |a - n| off kinks
    kinks: tuple[int, ...] = ()  # flat indices on a kink (their admissible set is an interval)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.analytical.shape)

    @property
    def ratio(self) -> np.ndarray:
        """error / bound per element: > 1 is out of bound (NaN: not checked)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isnan(self.error), np.nan, self.error / np.maximum(self.bound, 1e-300))

    def worst(self, n: int) -> list[int]:
        """The flat indices of the `n` elements that used the largest share of their bound."""
        r = self.ratio.reshape(-1)
        checked = np.flatnonzero(~np.isnan(r))
        order = np.argsort(-r[checked], kind="stable")
        return [int(i) for i in checked[order[:n]]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    check_id: str
    spec: str
    file: str
    dtype: str
    case: str
    target: str  # tensor name (gradient check) or contract.KIND
    status: Status
    message: str = ""
    comparison: Comparison | None = None
    tolerance: Tolerance | None = None
    numerical_dtype: str = ""  # the dtype forward ran in for the numerical gradient
    note: str = ""  # something the verdict depends on (e.g. no float64 oracle)
    kinks: int = 0  # elements found on a kink and held to the spec's kink rule
    seed: int = 0  # the case's seed: inputs, upstream gradient, samples and directions
    method: str = ""  # gradient checks: elementwise or directional
    sample: tuple[int, ...] | None = None  # the flat indices checked, where a sample was
    duration: float = 0.0
    device: str = "cpu"  # where the check ran (device agreement: the reference device)
    line: int = 0  # the spec line the check comes from: its tensor, its case, or the name
    line_file: str = ""  # the file that line is in, where not `file` (a base spec, extends:)
    evidence: Evidence | None = None  # per-element figures (failing gradient checks)

    @property
    def where(self) -> str:
        """file:line of the spec line the check comes from."""
        return f"{self.line_file or self.file}:{self.line}" if self.line else self.file

    @property
    def kind(self) -> str:
        if self.target.startswith(("agree.", "device.")):
            return "agreement"
        return "contract" if self.target.startswith("contract.") else "gradient"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.check_id,
            "spec": self.spec,
            "file": self.file,
            "line": self.line,
            **({"line_file": self.line_file} if self.line_file else {}),
            "dtype": self.dtype,
            "case": self.case,
            "device": self.device,
            "target": self.target,
            "kind": self.kind,
            "status": self.status.value,
            "message": self.message,
            "duration_s": round(self.duration, 6),
            "seed": self.seed,
        }
        if self.numerical_dtype:
            out["numerical_dtype"] = self.numerical_dtype
        if self.note:
            out["note"] = self.note
        if self.kinks:
            out["kinks"] = self.kinks
        if self.method:
            out["method"] = self.method
        if self.sample is not None:
            out["sample"] = {"seed": self.seed, "flat_indices": list(self.sample)}
        if self.comparison is not None:
            c = asdict(self.comparison)
            c["worst_index"] = list(self.comparison.worst_index)
            c["margin"] = self.comparison.margin if self.comparison.worst_ratio > 0 else None
            out["figures"] = c
        if self.tolerance is not None:
            out["tolerance"] = asdict(self.tolerance)
        return out


@dataclass(frozen=True, slots=True)
class Shard:
    """This run is shard `index` of `count` (--shard K/N) of a selection of `checks` check
    ids in all, `selection` the digest of how they were partitioned: `specgrad merge` tells
    the shards of one partition apart from another's, a missing or repeated shard from a
    complete set, and (`complete`: it ran all its checks, not stopped by -x, an interrupt
    or a spec that failed to bind) a set that holds every check from one that lost some."""

    index: int
    count: int
    checks: int
    selection: str
    complete: bool = True

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class RunSummary:
    results: list[CheckResult] = field(default_factory=list)
    spec_errors: list[SpecIssue] = field(default_factory=list)
    internal_errors: list[SpecIssue] = field(default_factory=list)  # bugs in specgrad itself
    notes: list[str] = field(default_factory=list)
    #: per spec: {framework: {"installed": version, "verified_with": version}}
    frameworks: dict[str, dict[str, dict[str, str | None]]] = field(default_factory=dict)
    #: the devices the checks ran on: {device: what it is (library, card)}
    devices: dict[str, str] = field(default_factory=dict)
    specs_checked: int = 0
    interrupted: bool = False
    signal: int = 2  # what interrupted the run: SIGINT (Ctrl-C, 2) or SIGTERM (15)
    shard: Shard | None = None  # --shard K/N: the part of the selection this run checked
    #: --shard: each check's place in the whole selection's order (merge restores it)
    positions: dict[str, int] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def exit_code(self) -> int:
        """130 interrupted (143 by SIGTERM), 3 internal error, 2 invalid spec, 1 a check
        failed, errored or timed out, 5 nothing was selected, 0 every selected check passed."""
        if self.interrupted:
            return 128 + self.signal
        if self.internal_errors:
            return EXIT_INTERNAL
        if self.spec_errors:
            return 2
        if any(r.status.bad for r in self.results):
            return 1
        selected = self.results or (self.shard is not None and self.shard.checks)
        return 0 if selected else EXIT_NOTHING_SELECTED

    def closing_line(self) -> str:
        passed = self.count(Status.PASS)
        failed = sum(r.status.bad for r in self.results)
        line = f"{passed} passed, {failed} failed"
        skipped = self.count(Status.SKIP)
        return f"{line}, {skipped} skipped" if skipped else line
