"""Fuzzing of the loader and validator: every document becomes a spec or located errors.

`parse_spec` (load, `extends:`, schema, semantics, model) on any document either returns a
Spec that `compile_spec` turns into plans, or raises SpecError whose every issue names a
file of the document, a line >= 1 where the file has any, and a message. Anything else
(another exception, a warning: the suite turns warnings into errors) is a bug, and so is
a file that appears in the test's folder: YAML never constructs objects, so a
`!!python/object/apply:os.system` payload can never run.

Documents come from four strategies: (a) specs generated over the schema's fields, then
perturbed (wrong types, missing and unknown fields, odd numbers and shapes, shared and
recursive nodes), optionally split into a base and a spec that `extends:` it; (b) the
shipped specs' text, mutated line by line and character by character; (c) arbitrary
bytes, invalid UTF-8 and other encodings among them; (d) the shipped specs with an unsafe
YAML tag planted, which must be a located error at the tag's line.

Each test keeps one TemporaryDirectory (the layout of specs/: the fuzzed file is
specs/frameworks/spec.yaml beside .npy files of every sort, the shipped specs are copies
one folder up so `extends: ../linear.yaml` resolves inside it); a document whose
`extends:` or fill `path:` would leave the folder is skipped, never read.

How many examples: the project's profile (deterministic, tests/conftest.py) with
SPECGRAD_FUZZ_EXAMPLES per test (default: the few below each test, the whole file in
seconds). The long run, `python benchmarks/fuzz.py --examples 10000`, registers a `fuzz`
profile (the one below, with its example count) before pytest loads tests/conftest.py, and
sets HYPOTHESIS_PROFILE=fuzz: conftest's own `load_profile` then loads it (set by hand
without the script, conftest fails: it runs before this module registers the profile). With SPECGRAD_FUZZ_COUNTS=FILE
the module writes its per-test outcome counts (valid, error, known:ID) there as JSON.

Bugs found and not yet fixed are in KNOWN_BUGS: an example that hits one (matched by
exception type, the specgrad function it was raised in and its message) is counted, not
failed, and `test_known_bug_still_reproduces` checks each one's minimal document still
fails that way, so fixing the bug fails that test: delete the entry then.
SPECGRAD_FUZZ_STRICT=1 fails on known bugs too (to shrink a new variant of one).
"""

from __future__ import annotations

import contextvars
import copy
import io
import json
import os
import posixpath
import re
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import specgrad
from specgrad.compile import CasePlan, compile_spec
from specgrad.errors import SpecError, SpecIssue
from specgrad.loader import load_spec_text
from specgrad.model import Spec
from specgrad.validate import parse_spec, schema_text

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"

# --- settings --------------------------------------------------------------------------

try:
    settings.get_profile("fuzz")
except InvalidArgument:  # not registered yet (benchmarks/fuzz.py registers it first)
    settings.register_profile(
        "fuzz",
        max_examples=10_000,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
if FUZZING:  # conftest loaded it already (it could only because the profile was registered early)
    settings.load_profile("fuzz")
EXAMPLES = int(os.environ.get("SPECGRAD_FUZZ_EXAMPLES") or 0)
STRICT = os.environ.get("SPECGRAD_FUZZ_STRICT", "") not in ("", "0")
COUNTS_FILE = os.environ.get("SPECGRAD_FUZZ_COUNTS", "")

#: the health checks a fast run suppresses: one workspace serves every example of a test
#: (its files are rewritten per example), and the documents are large and slow by design
_SUPPRESSED = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


def examples(default: int) -> settings:
    """Per-test settings: SPECGRAD_FUZZ_EXAMPLES, else the fuzz profile's count, else `default`."""
    if FUZZING:
        return settings(max_examples=EXAMPLES or settings.get_profile("fuzz").max_examples)
    return settings(max_examples=EXAMPLES or default, deadline=None, suppress_health_check=_SUPPRESSED)


# --- outcomes ----------------------------------------------------------------------------

#: test function -> outcome ("valid", "error", "known:ID", "skipped:escapes") -> examples
COUNTS: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _dump_counts() -> Iterator[None]:
    yield
    if not COUNTS_FILE:
        return
    path = Path(COUNTS_FILE)
    old = json.loads(path.read_text()) if path.is_file() else {}
    for test, counts in COUNTS.items():
        merged = Counter(old.get(test, {}))
        merged.update(counts)
        old[test] = dict(merged)
    path.write_text(json.dumps(old, indent=2, sort_keys=True))


def record(test: str, outcome: str) -> None:
    """Count an example's outcome (and show it in --hypothesis-show-statistics)."""
    COUNTS.setdefault(test, Counter())[outcome] += 1
    event(outcome)


# --- known bugs ------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A bug the fuzzer found, not fixed yet. `kind` crash: an exception other than
    SpecError of type `exc`, raised in the specgrad function `where`, message matching
    `pattern`; unlocated: a SpecError issue without a line, message matching `pattern`."""

    id: str
    kind: str
    pattern: str
    document: str  # minimal reproducing document (MARKER_PATH: the workspace's marker)
    exc: type[BaseException] | tuple[type[BaseException], ...] = Exception
    where: str = ""

    def matches_crash(self, exc: BaseException) -> bool:
        return (
            self.kind == "crash"
            and isinstance(exc, self.exc)
            and _innermost_specgrad_function(exc) == self.where
            and re.search(self.pattern, str(exc)) is not None
        )


_HEAD = "specgrad: 1\nname: x\ndescription: d\nforward: m:f\nbackward: m:g\n"

#: bugs the fuzzer found and that were fixed: each minimal document must stay a located
#: error or a valid spec (test_former_bugs_stay_fixed)
FORMER_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        "shape-product-overflow",
        "crash",
        r"overflow encountered|cannot convert float infinity to integer",
        _HEAD + "inputs:\n  x: {shape: [1" + "0" * 200 + ", 1" + "0" * 200 + "]}\n",
        (RuntimeWarning, OverflowError),
        "_tensor_issues",
    ),
    KnownBug(
        "isnan-of-big-int",
        "crash",
        r"ufunc 'isnan' not supported",
        _HEAD + "inputs:\n  x: {shape: [1], fill: {kind: constant, value: 100000000000000000000}}\n",
        TypeError,
        "_representable",
    ),
    KnownBug(
        "int-cast-of-big-int",
        "crash",
        r"too large to convert|out of bounds",
        _HEAD
        + "inputs:\n  y: {shape: [1]}\n  x: {shape: [1], dtype: int64, fill: {kind: constant, value: 100000000000000000000}}\n",
        (OverflowError, RuntimeWarning, DeprecationWarning),
        "_representable",
    ),
    KnownBug(
        "npy-path-too-long",
        "crash",
        r"File name too long",
        _HEAD + "inputs:\n  x: {shape: [1], fill: {kind: npy, path: " + "a" * 300 + "}}\n",
        OSError,
        "_npy_issues",
    ),
    KnownBug(
        "npy-path-null-byte",
        "crash",
        r"embedded null byte",
        _HEAD + 'inputs:\n  x: {shape: [1], fill: {kind: npy, path: "x\\0.npy"}}\n',
        ValueError,
        "_fill_issues",
    ),
    KnownBug(
        "npy-empty-file",
        "crash",
        r"No data left in file",
        _HEAD + "inputs:\n  x: {shape: [1], fill: {kind: npy, path: empty.npy}}\n",
        EOFError,
        "_npy_issues",
    ),
    KnownBug(
        "extends-path-too-long",
        "crash",
        r"File name too long",
        _HEAD + "extends: " + "a" * 300 + "\ninputs: {x: {shape: [1]}}\n",
        OSError,
        "_extended",
    ),
    KnownBug(
        "extends-null-byte",
        "crash",
        r"embedded null byte",
        _HEAD + 'extends: "a\\0b"\ninputs: {x: {shape: [1]}}\n',
        ValueError,
        "_extended",
    ),
    KnownBug(
        "reader-error-unlocated",
        "unlocated",
        r"^invalid YAML: unacceptable character",
        "name: x\ndescription: \x07\n",
    ),
    KnownBug(
        "undecodable-unlocated",
        "unlocated",
        r"^cannot read spec file: 'utf-8' codec can't decode",
        "name: x\ndescription: \udcff\n",  # written with surrogateescape: the byte 0xff
    ),
)

#: bugs found and not fixed yet (none now): an example that hits one is counted, not failed
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def _innermost_specgrad_function(exc: BaseException) -> str:
    package = str(Path(specgrad.__file__).resolve().parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(package)]
    return frames[-1].name if frames else ""


def known_crash(exc: BaseException) -> KnownBug | None:
    return next((b for b in KNOWN_BUGS if b.matches_crash(exc)), None)


def known_unlocated(issue: SpecIssue) -> KnownBug | None:
    return next(
        (
            b
            for b in KNOWN_BUGS
            if b.kind == "unlocated" and issue.location.line == 0 and re.search(b.pattern, issue.message)
        ),
        None,
    )


KNOWN = {b.id: b for b in KNOWN_BUGS}


# --- the workspace -----------------------------------------------------------------------


def _read_specs() -> dict[str, str]:
    """Every shipped spec's text, read once: the mutation corpus and `extends:` bases."""
    return {str(p.relative_to(SPECS)): p.read_text(encoding="utf-8") for p in sorted(SPECS.rglob("*.yaml"))}


SHIPPED = _read_specs()
SHIPPED_NAMES = sorted(SHIPPED)
TOP_LEVEL = [n for n in SHIPPED_NAMES if "/" not in n]


def _npy_bytes(array: np.ndarray[Any, Any], *, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


_BIG = _npy_bytes(np.arange(64, dtype=np.float64))
#: the .npy files beside the fuzzed spec (and dir.npy, a folder)
NPY_FILES: dict[str, bytes] = {
    "x.npy": _npy_bytes(np.zeros((2, 3))),
    "small.npy": _npy_bytes(np.ones(1, dtype=np.float32)),
    "ints.npy": _npy_bytes(np.arange(10, dtype=np.int64).reshape(2, 5)),
    "scalar.npy": _npy_bytes(np.array(1.5)),
    "zero.npy": _npy_bytes(np.zeros((0,))),
    "fortran.npy": _npy_bytes(np.asfortranarray(np.zeros((2, 3)))),
    "object.npy": _npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
    "trunc.npy": _BIG[: len(_BIG) - 100],
    "garbage.npy": b"\x93NUMPY\x01\x00garbage{'descr': '<f8', 'shape': (1,),",
    "text.npy": b"not an npy file\n",
    "empty.npy": b"",
}


class Workspace:
    """One test's temporary folder: static files written once, the fuzzed document
    (and a generated base) rewritten per example."""

    def __init__(self, root: Path, name: str = "") -> None:
        self.name = name  # the test's, for its outcome counts
        self.root = root.resolve()
        self.folder = self.root / "specs" / "frameworks"
        self.folder.mkdir(parents=True)
        self.spec = self.folder / "spec.yaml"
        self.base = self.folder / "base.yaml"
        self.marker = self.root / "MARKER"
        for name, text in SHIPPED.items():  # the bases `extends: ../NAME.yaml` finds
            if "/" not in name:
                (self.root / "specs" / name).write_text(text, encoding="utf-8")
        for name, data in NPY_FILES.items():
            (self.folder / name).write_bytes(data)
        (self.folder / "dir.npy").mkdir()
        (self.folder / "dir.yaml").mkdir()
        self.static = self._listing()

    def _listing(self) -> set[str]:
        return {
            str(Path(d, n).relative_to(self.root))
            for d, dirs, files in os.walk(self.root)
            for n in dirs + files
        }

    def _text(self, doc: str | bytes) -> bytes:
        data = doc.encode("utf-8", "surrogateescape") if isinstance(doc, str) else doc
        return data.replace(b"MARKER_PATH", str(self.marker).encode())

    def write(self, doc: str | bytes, base: str | bytes | None = None) -> None:
        self.spec.write_bytes(self._text(doc))
        if base is None:
            self.base.unlink(missing_ok=True)
        else:
            self.base.write_bytes(self._text(base))

    def escapes(self) -> bool:
        """Whether a path the written spec names (`extends:`, a fill's `path:`) leaves the
        folder: parsed without touching the file system, then each such string resolved."""
        try:
            raw = load_spec_text(self.spec.read_text(encoding="utf-8"), self.spec)
        except (SpecError, UnicodeDecodeError):
            return False
        except Exception:  # noqa: BLE001 - the check itself reports what the loader raises
            return False
        stack: list[Any] = [raw.data]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("extends", "path") and isinstance(value, str) and self._outside(value):
                        return True
                    stack.append(value)
            elif isinstance(node, list):
                stack.extend(node)
        return False

    def _outside(self, relative: str) -> bool:
        if "\x00" in relative:  # no file system call resolves it
            return False
        target = posixpath.normpath(posixpath.join(str(self.folder), relative))
        return not (target == str(self.root) or target.startswith(str(self.root) + "/"))

    def check(self, *, strict: bool = STRICT, fuzzed: bool = True) -> str:
        """Parse the written document and assert the property; the outcome, recorded under
        the test's name (fuzzed: False, outside hypothesis: not recorded)."""
        test = self.name if fuzzed else None
        if test is not None and self.escapes():
            record(test, "skipped:escapes")
            assume(False)
        try:
            outcome = self._outcome(strict, noting=test is not None)
        finally:
            assert not self.marker.exists(), "a YAML payload ran: the marker file exists"
            written = {str(p.relative_to(self.root)) for p in (self.spec, self.base) if p.exists()}
            extra = self._listing() - self.static - written
            assert not extra, f"parsing created files: {sorted(extra)}"
        if test is not None:
            record(test, outcome)
        return outcome

    def _outcome(self, strict: bool, *, noting: bool) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # as the suite does (pyproject filterwarnings)
            try:
                spec = parse_spec(self.spec)
            except SpecError as exc:
                return self._located(exc, strict)
            except Exception as exc:
                bug = known_crash(exc)
                if bug is None or strict:
                    raise
                if noting:
                    note(f"known bug {bug.id}: {type(exc).__name__}: {exc}")
                return f"known:{bug.id}"
            assert isinstance(spec, Spec), spec
            plans = compile_spec(spec)
        assert isinstance(plans, tuple) and all(isinstance(p, CasePlan) for p in plans)
        ids = [p.check_id(t) for p in plans for t in p.targets]
        assert all(isinstance(i, str) and i for i in ids)
        assert spec.abstract or plans or not spec.tensors, "a checkable spec compiled to no plans"
        return "valid"

    def _located(self, exc: SpecError, strict: bool) -> str:
        assert exc.issues, "a SpecError without issues"
        assert str(exc)
        outcome = "error"
        for issue in exc.issues:
            problems = self._problems(issue)
            if not problems:
                continue
            bug = known_unlocated(issue)
            if bug is None or strict:
                raise AssertionError(f"badly located issue {issue!r}: {'; '.join(problems)}")
            outcome = f"known:{bug.id}"
        return outcome

    def _problems(self, issue: SpecIssue) -> list[str]:
        out = []
        if not isinstance(issue.message, str) or not issue.message.strip():
            out.append("empty message")
        if not isinstance(issue.field, str):
            out.append("field is not a string")
        loc = issue.location
        file = Path(loc.file)
        if not file.is_absolute() or self.root not in file.resolve().parents or not file.is_file():
            return [*out, f"location {loc} is not a file of the document"]
        content = file.read_bytes()
        if content and loc.line < 1:
            out.append(f"line {loc.line} in a file with lines")
        try:
            text = content.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            lines = 1 + sum(text.count(b) for b in ("\n", "\x85", "\u2028", "\u2029"))
            if loc.line > lines:
                out.append(f"line {loc.line} past the end ({lines} lines)")
        if loc.column < 0:
            out.append(f"column {loc.column}")
        return out


@pytest.fixture
def workspace(request: pytest.FixtureRequest) -> Iterator[Workspace]:
    """One folder per test (not per example: hypothesis runs the body many times)."""
    with tempfile.TemporaryDirectory(prefix="specgrad-fuzz-") as folder:
        yield Workspace(Path(folder), request.node.originalname)


# --- (a) generated documents -------------------------------------------------------------


#: set while a clean document is drawn: `mostly` then always gives the valid value
CLEAN: contextvars.ContextVar[bool] = contextvars.ContextVar("CLEAN", default=False)


def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` about seven times in eight (always, in a clean document), else `odd`: each
    field is usually right, so that whole documents often are (the perturbations below
    make the rest wrong). Not one_of(valid, ..., odd): it draws its distinct branches alike."""
    return st.integers(0, 7).flatmap(lambda i: odd if i == 7 and not CLEAN.get() else valid)


IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
TENSOR_NAMES = st.one_of(
    st.sampled_from(["x", "w", "b", "y", "indices", "target", "grad_out", "init"]), IDENT
)
VALID_IMPORTS = st.sampled_from(
    ["layers:forward", "layers:backward", "m:f", "a.b:C.d", "specgrad.zoo.linear:forward"]
)
IMPORTS = mostly(VALID_IMPORTS, st.sampled_from(["m.f", "m:", ":f", "1m:f", "m:f:g", "autograd", "", "m :f"]))
FRAMEWORKS = mostly(
    st.sampled_from(["numpy", "torch", "jax"]), st.sampled_from(["cupy", "nump", "tensorflow"])
)
FLOAT_DTYPES = st.sampled_from(["float16", "float32", "float64"])
INT_DTYPES = st.sampled_from(["int32", "int64", "bool"])
SMALL = mostly(
    st.one_of(
        st.integers(-8, 8),
        st.floats(-8, 8, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.5, -0.5, 1.5, 0.1, 2.0**-24, 65504.0, 1e-5, 3.0e38, 2.0**53 + 1]),
    ),
    st.sampled_from([2**31, 2**63, 2**64 + 1, 10**20, -(10**20), 10**300, 10**400, 1e308, 5e-324]),
)
NONNEG = st.one_of(st.floats(0, 1, allow_nan=False), st.sampled_from([0, 1, 1e-300, 1e300]))
POSITIVE = st.one_of(st.floats(1e-12, 1, allow_nan=False), st.sampled_from([1, 1e-300, 1e300]))
SHAPES = mostly(
    st.one_of(st.lists(st.integers(1, 5), max_size=3), st.sampled_from([[2, 3], [1], [2, 5], []])),
    st.lists(st.sampled_from([0, -1, 1, 2, 10**5, 2**31, 2**63, 10**200, 10**400]), max_size=3),
)
NPY_PATHS = mostly(
    st.sampled_from([*NPY_FILES, "./x.npy", "../frameworks/x.npy"]),
    st.sampled_from(
        [
            *["dir.npy", "missing.npy", "../x.npy", "spec.yaml", "../linear.yaml", "ü.npy", " x.npy"],
            *["x.npy/", ".", "..", "x\x00.npy", "a" * 300],
        ]
    ),
)
EXTENDS = mostly(
    st.sampled_from(["base.yaml", "./base.yaml", "../linear.yaml", "../embedding.yaml"]),
    st.sampled_from(
        [
            *["spec.yaml", "missing.yaml", "x.npy", "dir.yaml", "empty.npy", ".", "", "b" * 300],
            *["a\x00b", "../frameworks"],
        ]
    ),
)
ACCESS = mostly(
    st.sampled_from(["w", "dw", "params.W", "grads['W']", "parameters['W']", "blocks[0].weight"]),
    st.sampled_from(["p[", "a..b", "", "[0", "x.", "1x", "a[b c]"]),
)
TEXT = mostly(
    st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["d", "a layer", "ü∂🙂", "x" * 300])),
    st.sampled_from(["", " ", "line\nbreak", "\x00"]),
)
CONTRACTS = ["deterministic", "backward_deterministic", "zero_upstream", "layout", "finite"]
CONTRACTS += ["no_mutation", "taylor"]


#: the schema the package validates with: fields this module does not know yet (a new
#: top-level field, a fill's new option) are generated from it
SCHEMA: dict[str, Any] = json.loads(schema_text())
NPY_OPTIONAL = {"allow_outside_root": st.booleans()} if "allow_outside_root" in json.dumps(SCHEMA) else {}


def from_schema(schema: Any) -> st.SearchStrategy[Any]:
    """Values for a simple schema (enum, const, number, integer, string, boolean, array),
    its bounds and just past them; anything else: junk."""
    if not isinstance(schema, dict):
        return JSONISH
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    edges = [v for b in (low, high) if b is not None for v in (b, b - 1, b + 1)]
    exclusive = [schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")]
    if kind == "integer":
        inside = st.integers(low, high).filter(lambda v: v not in exclusive)
        return mostly(inside, st.sampled_from([*edges, 0, 1]))
    if kind == "number":
        floats = st.floats(low, high, allow_nan=False, allow_infinity=False).filter(
            lambda v: v not in exclusive
        )
        return mostly(floats, st.sampled_from([*edges, 0, 1, 0.5]))
    if kind == "string":
        return TEXT
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(from_schema(schema.get("items")), max_size=3)
    return JSONISH


def fills() -> st.SearchStrategy[Any]:
    fd = st.fixed_dictionaries
    return st.one_of(
        st.sampled_from(["normal", "uniform", "special", "constant", "npy", "integers"]),
        fd({"kind": st.just("normal")}, optional={"mean": SMALL, "std": st.one_of(POSITIVE, SMALL)}),
        fd({"kind": st.just("uniform")}, optional={"low": SMALL, "high": SMALL}),
        fd({"kind": st.just("special")}, optional={"values": st.lists(SMALL, min_size=1, max_size=4)}),
        fd({"kind": st.just("constant"), "value": SMALL}),
        fd({"kind": st.just("npy"), "path": NPY_PATHS}, optional=NPY_OPTIONAL),
        fd({"kind": st.just("integers"), "high": st.integers(-3, 10)}, optional={"low": st.integers(-3, 10)}),
    )


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor: a float one with any fill, or (one time in five) an integer one, which
    mostly comes with the integers fill and grad: false it needs."""
    out: dict[str, Any] = {"shape": draw(SHAPES)}
    if draw(st.integers(0, 4)) == 3:  # (not 0 or 4: hypothesis favours the ends)
        out["dtype"] = draw(INT_DTYPES)
        low = draw(st.integers(-3, 1)) if out["dtype"] != "bool" else 0
        out["fill"] = draw(
            mostly(st.just({"kind": "integers", "low": low, "high": low + draw(st.integers(1, 4))}), fills())
        )
        out.update(draw(mostly(st.just({"grad": False}), st.just({}))))
        return out
    out.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "dtype": FLOAT_DTYPES,
                    "grad": mostly(st.just(True), st.just(False)),
                    "fill": fills(),
                },
            )
        )
    )
    return out


TENSOR = tensors()
EXPLAINED = st.fixed_dictionaries({"reason": TEXT}, optional={"rtol": NONNEG, "atol": NONNEG})
TOLERANCE = mostly(
    st.builds(lambda t, e: {**t, **e}, EXPLAINED, st.fixed_dictionaries({}, optional={"epsilon": POSITIVE})),
    st.fixed_dictionaries({}, optional={"rtol": NONNEG, "atol": NONNEG, "epsilon": POSITIVE, "reason": TEXT}),
)
AGREEMENT_TOLERANCE = mostly(
    EXPLAINED, st.fixed_dictionaries({}, optional={"rtol": NONNEG, "atol": NONNEG, "reason": TEXT})
)
LINK = st.fixed_dictionaries(
    {"axis": st.integers(0, 3)}, optional={"output_axis": st.integers(0, 3), "radius": st.integers(0, 2)}
)
STRUCTURE_KIND = st.sampled_from(["auto", "dense", "elementwise"])
DEVICE = st.one_of(
    st.sampled_from(["cpu", "gpu", "both"]),
    st.lists(st.sampled_from(["cpu", "gpu"]), min_size=1, max_size=2, unique=True),
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), SMALL, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(IDENT, inner, max_size=3)),
    max_leaves=6,
)
ATTR_KEYS = st.one_of(IDENT, st.sampled_from(["not valid", "x", "w", "class", "1a", "grad_out"]))
OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "dtypes": mostly(
        st.lists(FLOAT_DTYPES, min_size=1, max_size=3, unique=True), st.lists(FLOAT_DTYPES, max_size=3)
    ),
    "seed": mostly(st.integers(0, 2**32 - 1), st.sampled_from([2**32, -1, 2**64])),
    "attrs": st.dictionaries(ATTR_KEYS, JSONISH, max_size=3),
    "tolerances": st.dictionaries(FLOAT_DTYPES, TOLERANCE, max_size=3),
    "method": st.fixed_dictionaries(
        {},
        optional={
            "mode": st.sampled_from(["elementwise", "directional"]),
            "max_elements": st.integers(1, 100),
            "directions": st.integers(1, 1024),
        },
    ),
    "contracts": st.dictionaries(
        mostly(st.sampled_from(CONTRACTS), st.sampled_from(["jvp", "speed"])), st.booleans(), max_size=3
    ),
    "nondet_tol": NONNEG,
    "kinks": st.sampled_from(["subgradient", "skip", "fail"]),
    "structure": st.one_of(
        STRUCTURE_KIND,
        st.dictionaries(
            TENSOR_NAMES, st.one_of(STRUCTURE_KIND, st.lists(LINK, min_size=1, max_size=3)), max_size=2
        ),
    ),
    "device": DEVICE,
    "verified_with": st.dictionaries(
        IDENT, mostly(st.sampled_from(["2.13.0", "0.4.30", "1"]), st.just("")), max_size=2
    ),
    "agreement": st.dictionaries(FLOAT_DTYPES, AGREEMENT_TOLERANCE, max_size=2),
}


#: top-level fields of the schema this module has no strategy of its own for
_KNOWN_FIELDS = {"specgrad", "name", "description", "inputs", "parameters", "cases", "extends", "abstract"}
_KNOWN_FIELDS |= {"convention", "forward", "backward", "framework", "jvp", "layer", "second_order"}
_KNOWN_FIELDS |= {"implementations", "reference", *OPTIONAL_FIELDS}
NEW_FIELDS = {k: from_schema(v) for k, v in SCHEMA["properties"].items() if k not in _KNOWN_FIELDS}


@st.composite
def cases(draw: st.DrawFn, names: list[str]) -> list[Any]:
    tensor_names = st.one_of(st.sampled_from(names), TENSOR_NAMES) if names else TENSOR_NAMES
    case = st.one_of(
        st.sampled_from(["random", "wide", "special"]),
        st.fixed_dictionaries(
            {"name": IDENT}, optional={"fills": st.dictionaries(tensor_names, fills(), max_size=2)}
        ),
    )
    unique = st.lists(
        case, min_size=1, max_size=4, unique_by=lambda c: c if isinstance(c, str) else c["name"]
    )
    return draw(mostly(unique, st.lists(case, min_size=1, max_size=4)))


@st.composite
def layer_block(draw: st.DrawFn, inputs: list[str], params: list[str]) -> dict[str, Any]:
    """A layer: block; mostly one that locates exactly the spec's parameters."""
    names = st.one_of(st.sampled_from(params), IDENT) if params else IDENT
    where = st.fixed_dictionaries({"value": ACCESS}, optional={"grad": ACCESS})
    exact = st.fixed_dictionaries(
        {p: st.fixed_dictionaries({"value": ACCESS, "grad": ACCESS}) for p in params}
    )
    block: dict[str, Any] = {
        "class": draw(IMPORTS),
        "params": draw(mostly(exact, st.dictionaries(names, where, max_size=3))),
    }
    every_input = st.fixed_dictionaries({n: ACCESS for n in inputs})
    some_inputs = st.dictionaries(
        st.one_of(st.sampled_from(inputs), IDENT) if inputs else IDENT, ACCESS, max_size=2
    )
    block.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "init": st.dictionaries(ATTR_KEYS, JSONISH, max_size=2),
                    "forward": mostly(
                        st.sampled_from(["forward", "fwd", "__call__"]), st.sampled_from(["1x", ""])
                    ),
                    "backward": mostly(
                        st.sampled_from(["backward", "bwd"]), st.sampled_from(["autograd", "1x"])
                    ),
                    "output": ACCESS,
                    "input_grads": mostly(every_input, some_inputs),
                },
            )
        )
    )
    return block


@st.composite
def binding(draw: st.DrawFn, inputs: list[str], params: list[str]) -> dict[str, Any]:
    """The fields that bind callables, in one of the forms the schema allows."""
    form = draw(st.sampled_from(["functional", "cached", "autograd", "layer", "implementations", "abstract"]))
    if form in ("functional", "cached"):
        out: dict[str, Any] = {"forward": draw(VALID_IMPORTS), "backward": draw(VALID_IMPORTS)}
        if form == "cached" or draw(st.booleans()):
            out["convention"] = form
        if draw(st.booleans()):
            out["second_order"] = {
                "backward": draw(VALID_IMPORTS),
                "grad_out": {"shape": draw(SHAPES)},
            }
        return out
    if form == "autograd":
        out = {"framework": draw(FRAMEWORKS), "forward": draw(VALID_IMPORTS), "backward": "autograd"}
        if draw(st.booleans()):
            out["jvp"] = "autograd"
        return out
    if form == "layer":
        out = {"convention": "layer", "layer": draw(layer_block(inputs, params))}
        if draw(st.booleans()):
            out["framework"] = draw(FRAMEWORKS)
        return out
    if form == "implementations":
        impl = st.one_of(
            st.builds(lambda f, b: {"forward": f, "backward": b}, VALID_IMPORTS, VALID_IMPORTS),
            st.builds(
                lambda fw, f, j: {"framework": fw, "forward": f, "backward": "autograd", **j},
                FRAMEWORKS,
                VALID_IMPORTS,
                st.sampled_from([{}, {"jvp": "autograd"}]),
            ),
            st.builds(lambda lb: {"convention": "layer", "layer": lb}, layer_block(inputs, params)),
        )
        impls = draw(st.dictionaries(IDENT, impl, min_size=1, max_size=3))
        out = {"implementations": impls}
        if draw(st.booleans()):
            out["reference"] = draw(st.one_of(st.sampled_from(sorted(impls)), IDENT))
        return out
    return {"abstract": True}


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A spec over the schema's fields, valid or nearly (one time in three, a clean one:
    no field drawn odd)."""
    token = CLEAN.set(draw(st.integers(0, 2)) == 0)
    try:
        return draw(_spec_dict())
    finally:
        CLEAN.reset(token)


@st.composite
def _spec_dict(draw: st.DrawFn) -> dict[str, Any]:
    inputs = draw(st.dictionaries(TENSOR_NAMES, TENSOR, min_size=1, max_size=3))
    params = draw(st.dictionaries(TENSOR_NAMES, TENSOR, max_size=2)) if draw(st.booleans()) else None
    doc: dict[str, Any] = {
        "specgrad": 1,
        "name": draw(
            mostly(
                st.one_of(IDENT, st.sampled_from(["frameworks.linear", "a-b"])),
                st.sampled_from(["x y", "1x"]),
            )
        ),
        "description": draw(TEXT),
        "inputs": inputs,
    }
    if params is not None:
        doc["parameters"] = params
    doc.update(draw(binding(list(inputs), list(params or {}))))
    doc.update(draw(st.fixed_dictionaries({}, optional={**OPTIONAL_FIELDS, **NEW_FIELDS})))
    if draw(st.booleans()):
        doc["cases"] = draw(cases([*inputs, *(params or {})]))
    return doc


JUNK_INTS = st.sampled_from(
    [0, -1, 1, 2, -(2**31), 2**31, 2**63, 2**64 + 1, 10**20, 10**200, 10**400, -(10**400)]
)
JUNK_FLOATS = st.one_of(
    st.floats(),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0, 5e-324, 1.7976931348623157e308, 2.0]),
)
JUNK_STRINGS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
            *["", " ", "float8", "int8", "autograd", "layer", "cached", "random", "x" * 2000, "ü∂🙂"],
            *["x\x00y", "1e5", "0x10", "~", "null", "yes", ".nan", "<<", "m:f", "\t", "a\nb", "\x85"],
            *["\u2028", "\ufeff"],
        ]
    ),
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), JUNK_INTS, st.integers(), JUNK_FLOATS, JUNK_STRINGS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(IDENT, JUNK_STRINGS), inner, max_size=3),
    ),
    max_leaves=6,
)
UNKNOWN_KEYS = st.sampled_from(
    ["shpae", "inptus", "x-extra", "timeout", "", " ", "<<", "1", "Shape", "kind", "extends", "abstract"]
)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside `node`, the containers themselves included."""
    out: list[tuple[Any, Any]] = []
    stack, seen = [node], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            out.append((item, key))
            stack.append(value)
    return out


@st.composite
def perturbed(draw: st.DrawFn, doc: dict[str, Any], most: int = 4) -> dict[str, Any]:
    """`doc` with up to `most` random changes (a deep copy: drawn values are never mutated)."""
    doc = copy.deepcopy(doc)
    for _ in range(max(0, draw(st.integers(-most, most)))):  # none about half the time
        slots = _slots(doc)
        op = draw(st.sampled_from(["junk", "junk", "delete", "unknown", "wrap", "number", "alias", "cycle"]))
        if op == "unknown" or not slots:
            holders = [doc, *(c[k] for c, k in slots if isinstance(c[k], dict))]
            holder = holders[draw(st.integers(0, len(holders) - 1))]
            holder[draw(UNKNOWN_KEYS)] = draw(JUNK)
            continue
        container, key = slots[draw(st.integers(0, len(slots) - 1))]
        if op == "junk":
            container[key] = draw(JUNK)
        elif op == "delete":
            del container[key]
        elif op == "wrap":
            container[key] = draw(st.sampled_from([[container[key]], {"value": container[key]}]))
        elif op == "number":
            container[key] = draw(st.one_of(JUNK_INTS, JUNK_FLOATS, st.sampled_from([True, "1e5", ".nan"])))
        elif op == "alias":  # one node in two places: an anchor and an alias in the YAML
            other, other_key = slots[draw(st.integers(0, len(slots) - 1))]
            container[key] = other[other_key]
        elif op == "cycle" and isinstance(container[key], list):  # a recursive alias
            container[key].append(container[key])
        elif op == "cycle" and isinstance(container[key], dict):
            container[key]["self"] = container[key]
    return doc


@st.composite
def dumped(draw: st.DrawFn, doc: Any) -> str:
    """`doc` as YAML, in one of the styles yaml.safe_dump writes."""
    return yaml.safe_dump(
        doc,
        sort_keys=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, None, True])),
        allow_unicode=draw(st.booleans()),
        width=draw(st.sampled_from([80, 20, 10**6])),
        indent=draw(st.sampled_from([2, 4])),
        explicit_start=draw(st.booleans()),
    )


@st.composite
def generated_documents(draw: st.DrawFn) -> tuple[str, str | None]:
    """(spec text, base text or None): a generated spec, perturbed; sometimes split into a
    base (abstract or not) and a spec that extends it, overriding or removing its keys."""
    doc = draw(spec_dicts())
    base: dict[str, Any] | None = None
    if draw(st.integers(0, 3)) == 0:
        keys = sorted(doc)
        moved = draw(st.sets(st.sampled_from(keys), min_size=1))
        base = {k: doc[k] for k in keys if k in moved}
        doc = {k: v for k, v in doc.items() if k not in moved or draw(st.booleans())}
        if draw(st.booleans()):
            base["abstract"] = True
        for key in draw(st.sets(st.sampled_from(keys), max_size=2)):
            doc[key] = None  # `null` removes the base's key
        doc["extends"] = draw(EXTENDS)
        base = draw(perturbed(base, most=2))
    doc = draw(perturbed(doc))
    return draw(dumped(doc)), (draw(dumped(base)) if base is not None else None)


@examples(150)
@given(generated_documents())
def test_generated_documents_become_specs_or_located_errors(
    workspace: Workspace, document: tuple[str, str | None]
) -> None:
    text, base = document
    note(f"spec.yaml:\n{text}\nbase.yaml:\n{base}")
    workspace.write(text, base)
    workspace.check()


# --- (b) mutated shipped specs -----------------------------------------------------------

#: what a scalar becomes: YAML's special values, unsafe tags, aliases, odd numbers, text
TOKENS = [
    ".nan", ".NaN", ".inf", "-.inf", "~", "null", "Null", "true", "False", "yes", "no", "on",
    "0x10", "0o17", "0b101", "010", "+12", "-0", "-0.0", "1e999", "-1e999", "1e-999", "1_000",
    "1.", ".5", "5e-324", "1.7976931348623157e308", "9" * 400, "-" + "9" * 400, "1" + "0" * 200,
    "2.0", "0", "-1", "4294967296", "18446744073709551617", "9223372036854775808",
    "''", '""', "' '", "x" * 5000, '"' + "y" * 3000 + '"', "\t", "a\tb", "ü∂🙂", "\u2028", "\x85",
    '"\\0"', '"\\x00"', "\x00", "\ufeff", "\x7f", "\x1b[31m", "\ud7ff", "\U0010ffff",
    "{}", "[]", "[[[[[]]]]]", "[" * 80 + "]" * 80, "[" * 3000 + "]" * 3000, "{a: {b: {c: {d: []}}}}",
    "{shape: [1]}", "{shape: [1" + "0" * 200 + ", 1" + "0" * 200 + "]}",
    "{kind: npy, path: x.npy}", "{kind: npy, path: empty.npy}", "{kind: npy, path: trunc.npy}",
    "{kind: constant, value: .nan}", "{kind: integers, high: 1e400}",
    "&a [*a, *a]", "&a {x: *a}", "*a", "*undefined", "&b x", "&c [1, 2]", "&d {p: 1}", "{<<: *d}",
    "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]", "!!timestamp 2001-12-14", "2001-12-14",
    "12:30:00", "!!int abc", "!!float x", "!!str 3", "!!null ''", "!!bool maybe", "!!int 3",
    "!!float 1", "!local x", "!<!> x", "!<tag:example.com,2000:x> 1", "!!map {a: 1}", "!!seq [1]",
    '!!python/object/apply:os.system ["touch MARKER_PATH"]', "!!python/name:os.system",
    "!!python/module:os", "!!python/tuple [1, 2]", '!!python/object/new:builtins.open ["MARKER_PATH", "w"]',
    '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch MARKER_PATH"]', "!!python/none ''",
    "<<: *a", "? [1, 2]", "? x", "|", ">-", "|\n  text", "'", '"', "`", "@", "%", "- x", "-", "?",
    ":", "::", ": x", "#", "x #c", "{", "}", "[", "]", ",", "---", "...", "%YAML 1.1",
    "%YAML 1.2\n---", "%TAG !p! tag:yaml.org,2002:python/\n---", "autograd", "layer", "cached",
    "float8", "int64", "bool", "torch", "jax", "cupy", "numpy", "../linear.yaml", "x.npy",
    "special", "random", "integers", "m:f", "a.b:C", "a" * 300,
]  # fmt: skip
KEYS = [
    "specgrad", "name", "description", "convention", "forward", "backward", "framework", "jvp",
    "implementations", "reference", "agreement", "verified_with", "device", "abstract", "extends",
    "layer", "inputs", "parameters", "attrs", "dtypes", "cases", "seed", "second_order", "method",
    "contracts", "nondet_tol", "kinks", "structure", "tolerances", "shape", "dtype", "grad", "fill",
    "kind", "path", "value", "values", "low", "high", "x", "w", "shpae", "<<", "? x", "", "- a",
]  # fmt: skip
SCALAR = re.compile(r"(?<=[:\[,] )[^\s\[\]{},#][^\n,\]\}#]*|(?<=\[)[^\s\[\]{},#][^\n,\]\}#]*")
KEY = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):", re.MULTILINE)
INDENTS = ["", " ", "  ", "   ", "    ", "      ", "\t", " \t", "\t  "]
MUTATIONS = [
    "delete_line", "duplicate_line", "swap_lines", "reindent", "insert_chars", "replace_scalar",
    "replace_scalar", "replace_scalar", "insert_line", "truncate", "special_bytes", "replace_key",
]  # fmt: skip


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    """A shipped spec's text after 1 to 5 mutations of its lines, characters and scalars."""
    text = SHIPPED[draw(st.sampled_from(SHIPPED_NAMES))]
    for _ in range(draw(st.integers(1, 5))):
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(MUTATIONS))
        if op == "delete_line":
            del lines[i]
        elif op == "duplicate_line":
            lines.insert(i, lines[i])
        elif op == "swap_lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "reindent":
            lines[i] = draw(st.sampled_from(INDENTS)) + lines[i].lstrip(" \t")
        elif op == "insert_line":
            key = draw(st.sampled_from(KEYS))
            lines.insert(i, f"{draw(st.sampled_from(INDENTS))}{key}: {draw(st.sampled_from(TOKENS))}")
        if op in ("delete_line", "duplicate_line", "swap_lines", "reindent", "insert_line"):
            text = "\n".join(lines)
        elif op == "insert_chars":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.text(min_size=1, max_size=3)) + text[at:]
        elif op == "replace_scalar" or op == "replace_key":
            pattern = SCALAR if op == "replace_scalar" else KEY
            spots = list(pattern.finditer(text))
            if spots:
                spot = spots[draw(st.integers(0, len(spots) - 1))]
                group = 0 if op == "replace_scalar" else 2
                new = draw(st.sampled_from(TOKENS if op == "replace_scalar" else KEYS))
                text = text[: spot.start(group)] + new + text[spot.end(group) :]
        elif op == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif op == "special_bytes":
            edit = draw(st.sampled_from(["bom", "nul", "crlf", "cr", "second", "end", "tab"]))
            at = draw(st.integers(0, len(text)))
            text = {
                "bom": "\ufeff" + text,
                "nul": text[:at] + "\x00" + text[at:],
                "crlf": text.replace("\n", "\r\n"),
                "cr": text.replace("\n", "\r"),
                "second": text + "\n---\nname: second\n",
                "end": text + "\n...\n",
                "tab": text.replace("  ", "\t"),
            }[edit]
    return text


@examples(200)
@given(mutated_specs())
def test_mutated_shipped_specs_become_specs_or_located_errors(workspace: Workspace, text: str) -> None:
    note(f"spec.yaml:\n{text!r}")
    workspace.write(text)
    workspace.check()


# --- (c) arbitrary bytes -----------------------------------------------------------------

BAD_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x00"]
BAD_BYTES += [b"\xef\xbb\xbf", b"\r", b"\xc2\x85", b"\x80", b"\xe2\x80\xa8", b"\x1b", b"\t"]


@st.composite
def corrupted_specs(draw: st.DrawFn) -> bytes:
    """A shipped spec's bytes with bytes flipped, inserted or cut."""
    data = bytearray(SHIPPED[draw(st.sampled_from(SHIPPED_NAMES))].encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "cut"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(BAD_BYTES), st.binary(min_size=1, max_size=4)))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


ENCODINGS = ["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1", "cp1252", "utf-7"]
encoded_specs = st.builds(
    lambda name, encoding, extra: (SHIPPED[name] + extra).encode(encoding, "replace"),
    st.sampled_from(SHIPPED_NAMES),
    st.sampled_from(ENCODINGS),
    st.sampled_from(["", "# ü\n", "attrs: {a: 'é'}\n"]),
)


@examples(200)
@given(st.one_of(st.binary(max_size=512), corrupted_specs(), encoded_specs))
def test_arbitrary_bytes_become_specs_or_located_errors(workspace: Workspace, data: bytes) -> None:
    note(f"spec.yaml: {data!r}")
    workspace.write(data)
    workspace.check()


# --- (d) unsafe tags -----------------------------------------------------------------------

PAYLOADS = [
    '!!python/object/apply:os.system ["touch MARKER_PATH"]',
    '!!python/object/apply:subprocess.check_call [["touch", "MARKER_PATH"]]',
    '!!python/object/new:builtins.open ["MARKER_PATH", "w"]',
    '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch MARKER_PATH"]',
    "!!python/object:builtins.object {}",
    "!!python/tuple [1, 2]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/str x",
    "!!python/bytes eA==",
    "!!python/complex 1+2j",
    "!!python/none ''",
    "!!python/object/apply:os.system 'touch MARKER_PATH'",
]


VALUE_LINE = re.compile(r"^(\s*)([A-Za-z_][\w.-]*): (\S[^#]*)$")


def _without_attrs(lines: list[str]) -> list[str]:
    """The lines without a top-level `attrs:` block (the payload brings its own)."""
    out, skipping = [], False
    for line in lines:
        if line.startswith("attrs:"):
            skipping = True
            continue
        if skipping and line[:1] in (" ", "\t"):
            continue
        skipping = False
        out.append(line)
    return out


@st.composite
def planted_payloads(draw: st.DrawFn) -> tuple[str, int, str, str]:
    """(text, the payload's line, the payload, where) in a shipped top-level spec: as a
    value of one line (not a description, nor a value continued on the next line), an
    attribute, a key, a flow list item, or through a %TAG handle."""
    lines = _without_attrs(SHIPPED[draw(st.sampled_from(TOP_LEVEL))].rstrip("\n").split("\n"))
    payload = draw(st.sampled_from(PAYLOADS))
    where = draw(st.sampled_from(["value", "attr", "key", "flow", "directive"]))
    if where == "value":
        spots = []
        for i, text in enumerate(lines):
            m = VALUE_LINE.match(text)
            if not m or m.group(2) == "description":
                continue
            following = lines[i + 1] if i + 1 < len(lines) else ""
            deeper = len(following) - len(following.lstrip(" ")) > len(m.group(1))
            if following.strip() and deeper and not VALUE_LINE.match(following):
                continue  # a plain scalar or flow collection continued on the next line
            spots.append((i, m))
        i, m = spots[draw(st.integers(0, len(spots) - 1))]
        lines[i] = lines[i][: m.start(3)] + payload
        return "\n".join(lines) + "\n", i + 1, payload, where
    if where == "directive":  # the python tag spelled through a %TAG handle
        short = payload.replace("!!python/", "!p!")
        text = "%TAG !p! tag:yaml.org,2002:python/\n---\n" + "\n".join(lines) + f"\nattrs:\n  run: {short}\n"
        return text, len(lines) + 4, payload, where
    extra = {
        "attr": f"attrs:\n  run: {payload}",
        "key": f"attrs:\n  ? {payload}\n  : 1",
        "flow": f"attrs: {{run: [1, {payload} ]}}",  # the space: a tag would take the ]
    }[where]
    at = len(lines) + (2 if where in ("attr", "key") else 1)
    return "\n".join(lines) + "\n" + extra + "\n", at, payload, where


@examples(150)
@given(planted_payloads())
def test_unsafe_tags_are_located_errors_and_never_run(
    workspace: Workspace, planted: tuple[str, int, str, str]
) -> None:
    """An unsafe tag is a located error at its line (a tagged key: keys must be plain
    strings), and never runs: check() asserts the marker file is not there."""
    text, line, payload, where = planted
    note(f"spec.yaml:\n{text}")
    workspace.write(text)
    outcome = workspace.check()
    if outcome.startswith("known:"):
        return
    issues: tuple[SpecIssue, ...] = ()
    try:
        parse_spec(workspace.spec)
    except SpecError as exc:
        issues = exc.issues
    wanted = ("python/", "mapping keys must be plain strings") if where == "key" else ("python/",)
    tagged = [i for i in issues if any(w in i.message for w in wanted)]
    assert tagged, f"the unsafe tag {payload!r} at line {line} is not reported ({outcome})"
    assert all(i.location.line == line for i in tagged), (line, [str(i) for i in tagged])
    record(f"{workspace.name}[tag]", "rejected at its line")


def test_alias_bomb_is_a_located_error_in_moments(workspace: Workspace) -> None:
    """Aliases of aliases ("billion laughs"): 600 bytes that expand to 10**9 values are a
    located error, not minutes of work and gigabytes (found by this module's fuzzing)."""
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    workspace.write(_HEAD + "inputs: {x: {shape: [1]}}\nattrs:\n" + "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        parse_spec(workspace.spec)
    assert time.perf_counter() - start < 10
    assert all(i.location.line >= 7 for i in info.value.issues), info.value.issues


def test_marker_payload_would_run(tmp_path: Path) -> None:
    """The oracle works: PyYAML's unsafe loader does run the payload, creating the marker."""
    marker = tmp_path / "MARKER"
    yaml.unsafe_load(PAYLOADS[0].replace("MARKER_PATH", str(marker)))
    assert marker.exists()


# --- the bugs the fuzzer found stay fixed ----------------------------------------------


@pytest.mark.parametrize("bug", FORMER_BUGS, ids=[b.id for b in FORMER_BUGS])
def test_former_bugs_stay_fixed(bug: KnownBug) -> None:
    """Each document that once crashed the loader or validator, or gave an error without a
    line, is now a located error (or a valid spec)."""
    with tempfile.TemporaryDirectory(prefix="specgrad-fuzz-") as folder:
        ws = Workspace(Path(folder))
        ws.write(bug.document)
        outcome = ws.check(strict=True, fuzzed=False)
    assert outcome in ("error", "valid"), f"{bug.id}: {outcome}"


@pytest.mark.skipif(not KNOWN_BUGS, reason="no known bug to reproduce")
@pytest.mark.parametrize("bug", KNOWN_BUGS or (None,))
def test_known_bug_still_reproduces(bug: KnownBug) -> None:
    """A known bug's minimal document still fails as recorded: once the bug is fixed this
    test fails, and its KNOWN_BUGS entry moves to FORMER_BUGS."""
    with tempfile.TemporaryDirectory(prefix="specgrad-fuzz-") as folder:
        ws = Workspace(Path(folder))
        ws.write(bug.document)
        outcome = ws.check(strict=False, fuzzed=False)
    assert outcome == f"known:{bug.id}", f"{bug.id} no longer reproduces ({outcome}): fixed? move its entry"
