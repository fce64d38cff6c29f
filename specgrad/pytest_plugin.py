"""pytest plugin (entry point `pytest11`): `pytest specs/` collects spec files and runs
every compiled check as a test item, so gradient checks sit beside a project's other tests.

The check NAME[DTYPE,CASE]::TARGET is the item FILE::NAME::TARGET[DTYPE,CASE] (pytest
parses brackets only at the end of a node id), and its report is headed by its check id
(`pytest "specs/conv2d.yaml::conv2d::w[float32,random]"` runs one). Items of one case
share a forward/backward evaluation point: the case's selected checks run together the
first time one of them runs (once per process; under pytest-xdist, `--dist loadscope`
keeps a spec's checks on one worker, so each case is evaluated once). Verdicts and
figures are those of `specgrad validate` (same compile options, one BLAS thread), and a
failure's report is the text the CLI prints. Markers select: the dtype (`-m float32`), the
device (`-m cpu`), the case (`-m case_special`), and `specgrad` with keyword arguments
(`-m "specgrad(kind='contract')"`, pytest >= 8.3). Options: `--specgrad-dtype`,
`--specgrad-device`, `--specgrad-mode`, `--specgrad-seed`, `--specgrad-max-elements`,
`--specgrad-max-memory`; `[tool.specgrad]` supplies the defaults, as for the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from specgrad.compile import CasePlan
from specgrad.config import Config
from specgrad.errors import SpecError, SpecIssue, UsageError
from specgrad.numerics.tolerance import FLOAT_DTYPES
from specgrad.results import CheckResult, Status

_SPEC_KEY = re.compile(r"^specgrad[ \t]*:", re.MULTILINE)
_SETTINGS = pytest.StashKey[Config]()
_OPTIONS = pytest.StashKey[dict[str, Any]]()
_MODES = ("default", "fast", "per-element")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("specgrad", "specgrad gradient checks of spec files")
    group.addoption("--specgrad-dtype", action="append", metavar="DTYPE", help="only these dtypes")
    group.addoption("--specgrad-device", metavar="DEVICE", help="cpu, gpu, both, sim or a comma list")
    group.addoption("--specgrad-mode", choices=_MODES, help="default, fast or per-element")
    group.addoption("--specgrad-seed", type=int, metavar="N", help="override every spec's seed")
    group.addoption("--specgrad-max-elements", type=int, metavar="N", help="elements checked per tensor")
    group.addoption("--specgrad-max-memory", metavar="SIZE", help="e.g. 512M, 2G")
    parser.addini(
        "specgrad_collect", "collect spec files (*.yaml with a specgrad: key)", type="bool", default=True
    )


def pytest_configure(config: pytest.Config) -> None:
    from specgrad import config as project

    config.addinivalue_line("markers", "specgrad(spec, dtype, case, device, kind, target): a specgrad check")
    for dtype in FLOAT_DTYPES:
        config.addinivalue_line("markers", f"{dtype}: a specgrad check in {dtype}")
    for device in ("cpu", "gpu", "sim"):
        config.addinivalue_line("markers", f"{device}: a specgrad check run on device {device}")
    try:
        settings = project.load(start=Path(config.invocation_params.dir))
    except SpecError as exc:
        raise pytest.UsageError(
            "specgrad: invalid configuration:\n" + "\n".join(map(str, exc.issues))
        ) from None
    except UsageError as exc:
        raise pytest.UsageError(f"specgrad: {exc}") from None
    settings.use_import_roots()
    config.stash[_SETTINGS] = settings
    config.stash[_OPTIONS] = _options(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml") or not parent.config.getini("specgrad_collect"):
        return None
    try:
        if not _SPEC_KEY.search(file_path.read_text(encoding="utf-8", errors="replace")):
            return None  # another tool's YAML
    except OSError:
        return None
    return SpecFile.from_parent(parent, path=file_path)


def _options(config: pytest.Config) -> dict[str, Any]:
    """compile_spec's options: the command line's, else [tool.specgrad]'s."""
    from specgrad.backends import backend, parse_devices
    from specgrad.config import parse_size

    settings = config.stash[_SETTINGS]
    dtypes = [d.strip() for v in config.getoption("specgrad_dtype") or () for d in v.split(",") if d.strip()]
    for d in dtypes:
        if d not in FLOAT_DTYPES:
            raise pytest.UsageError(f"--specgrad-dtype {d!r}: expected one of {', '.join(FLOAT_DTYPES)}")
    device = config.getoption("specgrad_device") or settings.device
    memory = config.getoption("specgrad_max_memory")
    size = parse_size(memory) if memory else settings.max_memory
    if memory and size is None:
        raise pytest.UsageError(f"--specgrad-max-memory {memory!r}: expected a size such as 512M or 2G")
    seed = config.getoption("specgrad_seed")
    if seed is not None and not 0 <= seed < 2**32:
        raise pytest.UsageError(f"--specgrad-seed {seed}: expected an integer from 0 to 2**32-1")
    elements = config.getoption("specgrad_max_elements")
    if elements is not None and elements < 1:
        raise pytest.UsageError(f"--specgrad-max-elements {elements}: expected a positive integer")
    try:  # as the CLI: a device asked for that cannot be used is an error, not skipped checks
        devices = parse_devices(device) if device else None
        for d in devices or ():
            backend(d)
    except UsageError as exc:
        raise pytest.UsageError(f"specgrad: {exc}") from None
    return {
        "dtypes": dtypes or (list(settings.dtypes) if settings.dtypes else None),
        "seed": seed if seed is not None else settings.seed,
        "mode": config.getoption("specgrad_mode") or settings.mode,
        "max_elements": elements if elements is not None else settings.max_elements,
        "max_memory": size,
        "devices": devices,
    }


class SpecFile(pytest.File):
    """One spec file: a SpecNode per (derived) spec name, or one InvalidSpec item."""

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        from specgrad.compile import compile_spec
        from specgrad.validate import parse_spec

        try:
            spec = parse_spec(self.path, self.config.stash[_SETTINGS])
            _unique(spec, self.session)
            plans = compile_spec(spec, **self.config.stash[_OPTIONS])
        except SpecError as exc:
            yield InvalidSpec.from_parent(self, name="invalid-spec", issues=tuple(exc.issues))
            return
        by_name: dict[str, list[CasePlan]] = {}
        for plan in plans:
            by_name.setdefault(plan.spec.name, []).append(plan)
        for name, group in by_name.items():
            yield SpecNode.from_parent(self, name=name, plans=tuple(group))


_NAMES = pytest.StashKey[dict[str, Any]]()


def _unique(spec: Any, session: pytest.Session) -> None:
    """As the CLI: two spec files of one name would give checks of one id; the second is
    the error (files are collected in the same order on every xdist worker)."""
    if spec.abstract:
        return
    seen = session.stash.setdefault(_NAMES, {})
    first = seen.setdefault(spec.name, spec.name_location)
    if first is not spec.name_location and first.file != spec.name_location.file:
        raise SpecError.at(
            spec.name_location,
            "name",
            f"spec name '{spec.name}' is already used by {first}; check ids must be unique",
        )


def item_name(plan: CasePlan, target: str) -> str:
    """TARGET[DTYPE,CASE] (and the device): the check id's parts in pytest's own shape, a
    name with its parameters in a closing bracket, which every pytest version parses."""
    check_id = plan.check_id(target)
    return f"{target}[{check_id[len(plan.spec.name) + 1 : -len(target) - 3]}]"


class SpecNode(pytest.Collector):
    """NAME (NAME@IMPL, NAME.second_order): that spec's checks, one item each."""

    def __init__(self, *, plans: tuple[CasePlan, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plans = plans
        self._results: dict[int, dict[str, CheckResult] | SpecError] = {}

    def collect(self) -> Iterator[pytest.Item]:
        for index, plan in enumerate(self.plans):
            for target in plan.targets:
                yield CheckItem.from_parent(self, name=item_name(plan, target), index=index, target=target)

    def results(self, index: int) -> dict[str, CheckResult] | SpecError:
        """The plan's results by target, run once for the checks of it this session runs."""
        if index not in self._results:
            self._results[index] = self._run(index)
        return self._results[index]

    def _run(self, index: int) -> dict[str, CheckResult] | SpecError:
        from dataclasses import replace

        from specgrad.process import one_blas_thread, tune_allocator
        from specgrad.runner import run_plan

        plan = self.plans[index]
        selected = {
            item.target
            for item in self.session.items
            if isinstance(item, CheckItem) and item.parent is self and item.index == index
        }
        targets = tuple(t for t in plan.targets if t in selected) or plan.targets
        tune_allocator()
        try:
            with one_blas_thread():
                results = run_plan(replace(plan, targets=targets), _engines(self.session))
        except SpecError as exc:
            return exc
        return {r.target: r for r in results}


_ENGINES = pytest.StashKey[Any]()


def _engines(session: pytest.Session) -> Any:
    """One set of bound callables per session (per xdist worker), as the CLI's per process."""
    from specgrad.runner import Engines

    if _ENGINES not in session.stash:
        session.stash[_ENGINES] = Engines()
    return session.stash[_ENGINES]


class CheckFailed(Exception):
    """A check that FAILed or ERRORed: its report is the CLI's text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class CheckItem(pytest.Item):
    """One check: FILE::NAME::TARGET[DTYPE,CASE]; its report is headed by its check id,
    which JUnit files carry as the property `check_id`."""

    def __init__(self, *, index: int, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index, self.target = index, target
        node = self.parent
        assert isinstance(node, SpecNode)
        self.plan = plan = node.plans[index]
        self.check_id = plan.check_id(target)
        self.user_properties.append(("check_id", self.check_id))
        self.result: CheckResult | None = None
        kind = "agreement" if target.startswith(("agree.", "device.")) else "gradient"
        kind = "contract" if target.startswith("contract.") else kind
        case_marker = "case_" + re.sub(r"\W", "_", plan.case.name)
        self.config.addinivalue_line(
            "markers", f"{case_marker}: a specgrad check of input case {plan.case.name}"
        )
        for marker in (plan.dtype, plan.device, case_marker):
            self.add_marker(getattr(pytest.mark, marker))
        self.add_marker(
            pytest.mark.specgrad(
                spec=plan.spec.name,
                dtype=plan.dtype,
                case=plan.case.name,
                device=plan.device,
                kind=kind,
                target=target,
            )
        )

    def runtest(self) -> None:
        node = self.parent
        assert isinstance(node, SpecNode)
        outcome = node.results(self.index)
        if isinstance(outcome, SpecError):
            raise CheckFailed("\n".join(str(i) for i in outcome.issues))
        self.result = r = outcome[self.target]
        if r.status is Status.SKIP:
            pytest.skip(r.message or r.note or "skipped")
        if r.status.bad:
            from specgrad.reporting.console import failure_text

            raise CheckFailed(failure_text([r]))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, CheckFailed):
            return excinfo.value.text
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        origin = self.plan.origin(self.target)
        line = origin.line - 1 if origin.line else None
        return Path(origin.file), line, self.check_id


class InvalidSpec(pytest.Item):
    """A spec that does not load: one failing item at the first problem's line."""

    def __init__(self, *, issues: tuple[SpecIssue, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.issues = issues

    def runtest(self) -> None:
        raise CheckFailed("invalid spec:\n" + "\n".join(f"  {i}" for i in self.issues))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, CheckFailed):
            return excinfo.value.text
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        where = self.issues[0].location if self.issues else None
        if where is None or not where.line:
            return self.path, None, f"invalid spec {self.path.name}"
        return Path(where.file), where.line - 1, f"invalid spec {self.path.name}"
