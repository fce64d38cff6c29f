"""[tool.specgrad]: found walking up, validated with located messages, merged under specs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad import config as project
from specgrad.config import Config
from specgrad.errors import SpecError
from specgrad.validate import parse_spec
from tests.conftest import SPECS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _project(tmp_path: Path, table: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "x"\n\n[tool.specgrad]\n{table}\n')
    return tmp_path / "pyproject.toml"


def test_found_walking_up_past_projects_without_the_table(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    _project(tmp_path, 'paths = ["specs"]\nseed = 7')
    inner = tmp_path / "sub" / "deeper"
    inner.mkdir(parents=True)
    (tmp_path / "sub" / "pyproject.toml").write_text("[tool.ruff]\nline-length = 80\n")  # another tool's
    assert project.find(inner) == tmp_path / "pyproject.toml"
    c = project.load(start=inner)
    assert c.seed == 7 and c.paths == (tmp_path / "specs",) and c.source == tmp_path / "pyproject.toml"


def test_no_table_anywhere_is_no_settings(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.black]\nline-length = 80\n")
    assert project.find(tmp_path) is None or project.find(tmp_path) != tmp_path / "pyproject.toml"


def test_every_setting_parsed(tmp_path: Path) -> None:
    for folder in ("specs", "more", "src"):
        (tmp_path / folder).mkdir()
    path = _project(
        tmp_path,
        'paths = ["specs", "more"]\ndtypes = ["float64"]\ndevice = "cpu,sim"\nmode = "fast"\nseed = 3\n'
        'jobs = 2\nmax_memory = "64M"\nmax_elements = 50\nimport_roots = ["src"]\ntimeout = 2.5\n'
        'isolate = true\nexecutor = "dask"\nscheduler = "tcp://10.0.0.5:8786"\n'
        '[tool.specgrad.tolerances.float32]\nepsilon = 1e-3\nrtol = 1e-4\nreason = "measured"\n',
    )
    c = project.load(path)
    assert c.dtypes == ("float64",) and c.device == "cpu,sim" and c.mode == "fast"
    assert (c.seed, c.jobs, c.max_memory, c.max_elements) == (3, 2, 64 << 20, 50)
    assert c.import_roots == (tmp_path / "src",) and (c.timeout, c.isolate) == (2.5, True)
    assert (c.executor, c.scheduler) == ("dask", "tcp://10.0.0.5:8786")
    assert c.tolerance_defaults() == {"float32": {"epsilon": 1e-3, "rtol": 1e-4, "reason": "measured"}}
    hash(c)  # the worker processes' compile caches key on it


@pytest.mark.parametrize(
    ("table", "line", "pattern"),
    [
        (
            'dtype = ["float32"]',
            5,
            r"tool\.specgrad\.dtype: unknown setting 'dtype' \(did you mean 'dtypes'\?\)",
        ),
        ('dtypes = ["float128"]', 5, r"tool\.specgrad\.dtypes: expected a non-empty list of float16"),
        ('device = "tpu"', 5, r"tool\.specgrad\.device: .*tpu"),
        ('mode = "quick"', 5, r"tool\.specgrad\.mode: expected one of default, fast, per-element"),
        ("seed = -1", 5, r"tool\.specgrad\.seed: expected an integer >= 0"),
        ("jobs = true", 5, r"tool\.specgrad\.jobs: expected an integer >= 1"),
        ('max_memory = "lots"', 5, r"tool\.specgrad\.max_memory: expected a size"),
        ('max_memory = "1.5"', 5, r"tool\.specgrad\.max_memory: expected a size"),
        ("timeout = 0", 5, r"tool\.specgrad\.timeout: expected seconds, a number > 0 and <= 604800, got 0"),
        ('timeout = "1m"', 5, r"tool\.specgrad\.timeout: expected seconds"),
        ('isolate = "yes"', 5, r"tool\.specgrad\.isolate: expected true or false, got 'yes'"),
        ('paths = "specs"', 5, r"tool\.specgrad\.paths: expected a list"),
        ('executor = "ray"', 5, r"tool\.specgrad\.executor: expected local or dask, got 'ray'"),
        ("scheduler = 8786", 5, r"tool\.specgrad\.scheduler: expected a Dask scheduler's address"),
        ("[tool.specgrad.tolerances.float32]\nrtol = 1e-3", 5, r"float32: rtol/atol replace the error model"),
        (
            "[tool.specgrad.tolerances.float23]\nepsilon = 1e-3",
            5,
            r"unknown dtype 'float23' \(did you mean 'float32'\?\)",
        ),
        (
            "[tool.specgrad.tolerances.float64]\nepsilon = 0",
            5,
            r"float64\.epsilon: expected a positive number",
        ),
    ],
)
def test_bad_settings_are_located(tmp_path: Path, table: str, line: int, pattern: str) -> None:
    path = _project(tmp_path, table)
    with pytest.raises(SpecError) as info:
        project.load(path)
    text = "\n".join(map(str, info.value.issues))
    assert f"pyproject.toml:{line}" in text, text
    assert re.search(pattern, text), text


def test_invalid_toml_is_located(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.specgrad]\nseed = \n")
    with pytest.raises(SpecError, match="invalid TOML"):
        project.load(start=tmp_path)


def test_config_tolerances_sit_under_the_spec_own(tmp_path: Path) -> None:
    """The project's epsilon applies where a spec sets none; a spec's own value wins."""
    c = Config(tmp_path / "pyproject.toml", tolerances=(("float64", (("epsilon", 1e-4),)),))
    plain = parse_spec(SPECS / "relu.yaml", c)
    assert plain.tolerances["float64"].epsilon == 1e-4
    assert not plain.tolerances["float64"].hand_set
    own = tmp_path / "own.yaml"
    own.write_text((SPECS / "relu.yaml").read_text() + "tolerances: {float64: {epsilon: 2.0e-5}}\n")
    assert parse_spec(own, c).tolerances["float64"].epsilon == 2e-5


def test_config_tolerance_errors_point_at_the_pyproject(tmp_path: Path) -> None:
    """A hand-set rtol from the project still needs its reason; the spec validator says so
    at the pyproject's location (load() refuses it earlier; this is the second line of defence)."""
    c = Config(tmp_path / "pyproject.toml", tolerances=(("float64", (("rtol", 1e-3),)),))
    with pytest.raises(SpecError) as info:
        parse_spec(SPECS / "relu.yaml", c)
    assert any("pyproject.toml" in str(i.location.file) for i in info.value.issues), info.value.issues


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**33),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.sampled_from(["float16", "float32", "x", "", "specs"]), max_size=3),
    st.dictionaries(
        st.sampled_from(["float32", "float64", "bf16"]),
        st.dictionaries(
            st.sampled_from(["epsilon", "rtol", "atol", "reason", "eps"]),
            st.one_of(st.floats(allow_nan=False), st.text(max_size=5)),
            max_size=3,
        ),
        max_size=2,
    ),
)
_keys = st.sampled_from([*project.SETTINGS, "speed"])  # and one it does not know


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else "0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace(
            "\x7f", "\\u007f"
        )  # JSON escapes are TOML escapes (but for DEL)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
    return '""'


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_any_table_is_settings_or_a_located_error(
    tmp_path_factory: pytest.TempPathFactory, table: dict
) -> None:  # type: ignore[type-arg]
    folder = tmp_path_factory.mktemp("cfg")
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in table.items() if v is not None)
    path = _project(folder, body)
    tomllib.loads(path.read_text())  # the generator writes valid TOML
    try:
        c = project.load(path)
    except SpecError as exc:
        assert all(
            str(i.location.file) == str(path) and i.field.startswith("tool.specgrad") for i in exc.issues
        )
    else:
        assert c.source == path


@pytest.mark.parametrize(
    "text",
    [
        "[[tool.specgrad]]\nseed = 1\n",  # an array of tables: wrong, but meant for specgrad
        'tool = {specgrad = {seed = "x"}}\n',
        "[tool.specgrad\nseed = 1\n",  # malformed header
        b"[tool.specgrad]\nseed = 1 # caf\xe9\n",  # not UTF-8
    ],
)
def test_a_pyproject_meant_for_specgrad_is_never_walked_past(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert project.find(tmp_path) == path
    with pytest.raises(SpecError) as info:
        project.load(start=tmp_path)
    assert all(str(i.location.file) == str(path) for i in info.value.issues)


def test_paths_and_import_roots_must_exist(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    path = _project(tmp_path, 'paths = ["specs", "nope"]\nimport_roots = ["src"]')
    with pytest.raises(SpecError) as info:
        project.load(path)
    text = "\n".join(map(str, info.value.issues))
    assert "pyproject.toml:5: tool.specgrad.paths: no such file or folder: nope" in text
    assert "pyproject.toml:6: tool.specgrad.import_roots: no such file or folder: src" in text
