"""`specgrad merge`: the reports of N runs (the shards of a CI matrix, or runs over
different spec folders) joined into one summary, hence one report and one exit code.

Shards are checked before they are joined: every shard of one selection present exactly
once, all of the same partition (same specs, flags and spec files: a digest of which check
went to which shard), no check in two reports, and together every check of the selection
unless one stopped early. Anything else is a ReportError: a merged report that
claims more than the shards ran would hide a missing CI job. A shard that stopped early
(-x, Ctrl-C, a spec that failed to import) holds fewer checks; its reason is in the
merged report and its exit code (1, 130, 2), as in one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specgrad.reporting.reader import ReportError
from specgrad.results import RunSummary


def merge(reports: Sequence[tuple[Path, RunSummary]]) -> RunSummary:
    _check_shards(reports)
    out = RunSummary()
    owner: dict[str, Path] = {}
    for path, s in sorted(reports, key=lambda r: r[1].shard.index if r[1].shard else 0):
        for r in s.results:
            if r.check_id in owner:
                raise ReportError(
                    f"check {r.check_id} is in {owner[r.check_id]} and in {path}: the reports overlap "
                    "(the same report twice, or runs of the same specs); merge joins disjoint runs"
                )
            owner[r.check_id] = path
        out.results += s.results
        # the same error read from JSON and from JUnit may split field and message apart
        # differently ("import: No module ..."): the same error prints the same
        out.spec_errors += [i for i in s.spec_errors if str(i) not in map(str, out.spec_errors)]
        out.internal_errors += [i for i in s.internal_errors if str(i) not in map(str, out.internal_errors)]
        out.notes += [n for n in s.notes if n not in out.notes and not n.startswith("shard ")]
        for spec, found in s.frameworks.items():
            out.frameworks.setdefault(spec, found)
        out.devices.update(s.devices)
        if s.interrupted and not out.interrupted:
            out.interrupted, out.signal = True, s.signal
    positions = {k: v for _, s in reports for k, v in s.positions.items()}
    first: dict[str, int] = {}
    for i, r in enumerate(out.results):
        first.setdefault(r.spec, i)
    if all(r.check_id in positions for r in out.results):  # shards: the one run's order
        out.results.sort(key=lambda r: positions[r.check_id])
    else:  # each spec's checks together, the specs in file order
        out.results.sort(key=lambda r: (r.file, first[r.spec]))
    out.specs_checked = len(first)
    return out


def _check_shards(reports: Sequence[tuple[Path, RunSummary]]) -> None:
    sharded = [(p, s.shard) for p, s in reports if s.shard is not None]
    if not sharded:
        return
    if len(sharded) != len(reports):
        plain = next(p for p, s in reports if s.shard is None)
        raise ReportError(
            f"{plain} is not a shard's report (no --shard), but {sharded[0][0]} is: merge one or the other"
        )
    path0, first = sharded[0]
    for path, shard in sharded:
        if (shard.count, shard.selection) != (first.count, first.selection):
            raise ReportError(
                f"{path} is shard {shard} of another selection than {path0} (shard {first}): "
                "the shards of one CI matrix run the same specs with the same flags"
            )
    seen: dict[int, Path] = {}
    for path, shard in sharded:
        if shard.index in seen:
            raise ReportError(f"shard {shard} is given twice: {seen[shard.index]} and {path}")
        seen[shard.index] = path
    missing = [f"{k}/{first.count}" for k in range(1, first.count + 1) if k not in seen]
    if missing:
        raise ReportError(
            f"shard {', '.join(missing)} missing: the {first.count} shards' reports are needed "
            f"(got {', '.join(str(p) for p, _ in sharded)})"
        )
    held = sum(len(s.results) for _, s in reports)
    if held != first.checks and all(shard.complete for _, shard in sharded):
        raise ReportError(
            f"the shards hold {held} checks, their selection has {first.checks}, and none says it "
            "stopped early: a report is not its shard's whole run (edited, or overwritten by another run)"
        )
