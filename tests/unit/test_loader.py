from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.errors import SpecError
from specgrad.loader import _BOOL, _FLOAT, _INT, _NULL, format_path, load_spec, load_spec_text

P = Path("spec.yaml")


def issues(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, P)
    return [str(i) for i in info.value.issues]


def test_yaml12_scalars() -> None:
    raw = load_spec_text("a: 1e-5\nb: yes\nc: 010\nd: 1.0E+3\ne: .inf\nf: 0x10\ng: ~\nh: True\n", P)
    assert raw.data == {
        "a": 1e-5,
        "b": "yes",
        "c": 10,
        "d": 1000.0,
        "e": float("inf"),
        "f": 16,
        "g": None,
        "h": True,
    }
    assert isinstance(raw.data["a"], float)


def test_seed_config_epsilon_is_a_number() -> None:
    raw = load_spec_text("epsilon: 1e-5\nrtol: 1e-2\natol: 1e-5\nrandom_seed: 42\n", P)
    assert raw.data == {"epsilon": 1e-5, "rtol": 1e-2, "atol": 1e-5, "random_seed": 42}


def test_locations_are_one_based_and_nested() -> None:
    raw = load_spec_text("name: x\ninputs:\n  x:\n    shape: [4, 8]\n", P)
    assert (raw.locate(("inputs", "x", "shape", 1)).line, raw.locate(("inputs", "x", "shape", 1)).column) == (
        4,
        16,
    )
    assert raw.locate(("inputs", "x"), key=True).line == 3
    # an unknown deeper path falls back to the nearest located ancestor
    assert raw.locate(("inputs", "x", "nope", 3)).line == 4  # the block mapping x holds


def test_duplicate_key_is_located_error() -> None:
    (msg,) = issues("name: a\ndescription: b\nname: c\n")
    assert msg == "spec.yaml:3:1: name: duplicate key 'name' (first defined at line 1)"


def test_nested_duplicate_key() -> None:
    (msg,) = issues("inputs:\n  x: {shape: [1]}\n  x: {shape: [2]}\n")
    assert msg.startswith("spec.yaml:3:3: inputs.x: duplicate key 'x'")


def test_syntax_error_is_located() -> None:
    (msg,) = issues("name: a\ninputs: [1, 2\n")
    assert msg.startswith("spec.yaml:3:1: invalid YAML")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty spec file"),
        ("# only a comment\n", "empty spec file"),
        ("a: 1\n---\nb: 2\n", "found a second one here"),
        ("a: !!python/object:os.system x\n", "unsupported YAML tag"),
        ("a: &x [*x]\n", "recursive alias"),
        ("? [1, 2]\n: x\n", "mapping keys must be plain strings"),
        ("x: &a {shape: [2], <<: *a}\n", "recursive alias"),
        ("[" * 3000 + "]" * 3000, "nests too deeply"),
    ],
)
def test_bad_documents(text: str, fragment: str) -> None:
    assert any(fragment in m for m in issues(text))


def test_merge_key_after_own_keys_keeps_their_locations() -> None:
    raw = load_spec_text("base: &b {shape: [2, 3], grad: true}\nx:\n  shape: [2, -3]\n  <<: *b\n", P)
    assert raw.data["x"] == {"shape": [2, -3], "grad": True}
    assert raw.locate(("x", "shape", 1)).line == 3


def test_merge_key() -> None:
    raw = load_spec_text("base: &b {p: 1, q: 2}\nm:\n  <<: *b\n  q: 3\n", P)
    assert raw.data["m"] == {"p": 1, "q": 3}


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "bin.yaml")


def test_format_path() -> None:
    assert format_path(("inputs", "x", "shape", 1)) == "inputs.x.shape[1]"
    assert format_path(("cases", 0, "fills")) == "cases[0].fills"
    assert format_path(()) == ""


# strings that YAML 1.1 (the dumper) and 1.2 (our loader) resolve alike: '0E0' is a
# string to PyYAML's dumper but a float in YAML 1.2, so such strings are left out here
plain_text = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=8).filter(
    lambda s: not any(r.match(s) for r in (_BOOL, _NULL, _INT, _FLOAT))
)
yaml_scalars = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False), st.booleans(), plain_text)
documents = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(documents)
def test_round_trip_of_generated_documents(doc: object) -> None:
    """Every JSON-like document dumped as YAML loads back equal, with every path located."""
    import yaml

    raw = load_spec_text(yaml.safe_dump({"root": doc}), P)
    assert raw.data == {"root": doc}
    assert all(loc.line >= 1 for loc in raw.locations.values())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_loads_or_fails_located(text: str) -> None:
    try:
        load_spec_text(text, P)
    except SpecError as exc:
        assert exc.issues and all(str(i).startswith("spec.yaml") for i in exc.issues)
