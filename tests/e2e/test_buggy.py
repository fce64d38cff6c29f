"""Every deliberately buggy backward fails, and the failing checks name exactly the right
tensor(s): a bug in one gradient does not smear into the others."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import SPECS

BUGGY = Path(__file__).resolve().parent.parent / "buggy" / "buggy_layers.py"

# (zoo spec, buggy backward, spec edits, tensors whose gradient must fail)
CASES = [
    (
        "linear",
        "linear_dw_missing_transpose",
        {"w: {shape: [8, 16]}": "w: {shape: [16, 16]}", "b: {shape: [8]}": "b: {shape: [16]}"},
        {"w"},
    ),
    ("linear", "linear_bias_wrong_axis", {"x: {shape: [1, 16]}": "x: {shape: [8, 16]}"}, {"b"}),
    ("sigmoid", "sigmoid_sign_error", {}, {"x"}),
    ("attention", "attention_missing_scale", {}, {"q", "k"}),
    ("conv2d", "conv_wrong_at_borders", {}, {"x"}),
    ("layernorm", "layernorm_dgamma_uses_x", {}, {"gamma"}),
    ("batchnorm", "batchnorm_stats_as_constants", {}, {"x"}),
    ("softmax", "softmax_missing_sum_term", {}, {"x"}),
    ("softmax_cross_entropy", "cross_entropy_missing_batch_mean", {}, {"logits"}),
    ("maxpool2d", "maxpool_routes_to_window_corner", {}, {"x"}),
    ("embedding", "embedding_last_write_wins", {}, {"weight"}),
    ("tanh", "tanh_derivative_not_squared", {}, {"x"}),
    ("gelu", "gelu_missing_cubic_factor", {}, {"x"}),
    ("avgpool2d", "avgpool_divides_by_kernel_not_area", {}, {"x"}),
    ("dropout", "dropout_forgets_scale", {}, {"x"}),
    ("log_softmax", "log_softmax_elementwise_sum", {}, {"x"}),
    ("batchnorm_cached", "batchnorm_cached_swapped_affine", {}, {"gamma", "beta"}),
    ("relu", "relu_gradient_at_negatives", {}, {"x"}),
    # the special case must catch it too: pred and target get different special values
    ("mse_loss", "mse_missing_factor_two", {}, {"pred", "target"}),
]


def _buggy_spec(tmp_path: Path, spec: str, backward: str, edits: dict[str, str]) -> Path:
    text = (SPECS / f"{spec}.yaml").read_text()
    text, n = re.subn(r"^backward: .*$", f"backward: buggy_layers:{backward}", text, flags=re.MULTILINE)
    assert n == 1
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    shutil.copy(BUGGY, tmp_path / "buggy_layers.py")
    path = tmp_path / f"{spec}.yaml"
    path.write_text(text)
    return path


def _statuses(report: Path) -> list[dict[str, str]]:
    return json.loads(report.read_text())["checks"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("spec, backward, edits, wrong", CASES, ids=[c[1] for c in CASES])
def test_buggy_backward_fails_naming_the_tensor(
    tmp_path: Path,
    cli,
    spec: str,
    backward: str,  # type: ignore[no-untyped-def]
    edits: dict[str, str],
    wrong: set[str],
) -> None:
    path = _buggy_spec(tmp_path, spec, backward, edits)
    report = tmp_path / "report.json"
    result = cli("validate", path, "--json", report)
    assert result.code == 1, result.text
    checks = _statuses(report)
    failing = {c["target"] for c in checks if c["status"] != "PASS"}
    assert failing == wrong, result.text
    # in float64 every wrong tensor fails in every case, as a gradient failure with figures
    for c in checks:
        if c["dtype"] == "float64" and c["target"] in wrong:
            assert c["status"] == "FAIL" and "figures" in c, c
    for name in wrong:
        assert re.search(rf"FAIL {spec}\[float64,\w+\]::{name}\n", result.out), result.out
        assert f"gradient of {name} is wrong at" in result.out


def test_layer_object_bug(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    text = (
        (SPECS / "dense_layer.yaml")
        .read_text()
        .replace("specgrad.zoo.layers:Dense", "buggy_layers:DenseBiasMean")
    )
    shutil.copy(BUGGY, tmp_path / "buggy_layers.py")
    (tmp_path / "dense.yaml").write_text(text)
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path / "dense.yaml", "--json", report)
    assert result.code == 1
    assert {c["target"] for c in _statuses(report) if c["status"] != "PASS"} == {"b"}
