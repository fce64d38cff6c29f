"""The mutant corpus (tests/buggy/buggy_layers.py) at default settings: every mutant is
caught in float32 and float64, in the random and the special-value case (or, for a bug
that lives in a branch, in the case that reaches it), and the failing checks name exactly
the tensors whose gradient is wrong. All mutants run in one CLI call."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SPECS

BUGGY = Path(__file__).resolve().parent.parent / "buggy" / "buggy_layers.py"
SQUARE_W = {"w: {shape: [8, 16]}": "w: {shape: [16, 16]}", "b: {shape: [8]}": "b: {shape: [16]}"}
BATCH_8 = {"x: {shape: [1, 16]}": "x: {shape: [8, 16]}"}
BOTH = ("random", "special")

# mutant: (zoo spec, spec edits, tensors whose gradient is wrong, cases that must catch it)
MUTANTS: dict[str, tuple[str, dict[str, str], set[str], tuple[str, ...]]] = {
    "linear_dw_missing_transpose": ("linear", SQUARE_W, {"w"}, BOTH),
    "linear_bias_wrong_axis": ("linear", BATCH_8, {"b"}, BOTH),
    "linear_dw_mean_over_batch": ("linear", BATCH_8, {"w"}, BOTH),
    "linear_dx_factor_1_01": ("linear", {}, {"x"}, BOTH),
    "linear_one_element_wrong": ("linear", {}, {"w"}, BOTH),
    "conv_wrong_at_borders": ("conv2d", {}, {"x"}, BOTH),
    "conv_padding_off_by_one": ("conv2d", {}, {"x"}, BOTH),
    "conv_flipped_kernel": ("conv2d", {}, {"x"}, BOTH),
    "conv_ignores_stride_in_dx": ("conv2d", {}, {"x"}, BOTH),
    "conv_bias_mean": ("conv2d", {}, {"b"}, BOTH),
    "conv_dw_wrong_channel": ("conv2d", {}, {"w"}, BOTH),
    "sigmoid_sign_error": ("sigmoid", {}, {"x"}, BOTH),
    "sigmoid_derivative_of_input": ("sigmoid", {}, {"x"}, BOTH),
    # |x| > 3 is reached by the wide case, not by unit-scale random or special values
    "sigmoid_saturation_shortcut": ("sigmoid", {}, {"x"}, ("wide",)),
    "tanh_derivative_not_squared": ("tanh", {}, {"x"}, BOTH),
    "tanh_derivative_of_input": ("tanh", {}, {"x"}, BOTH),
    "gelu_missing_cubic_factor": ("gelu", {}, {"x"}, BOTH),
    "gelu_missing_half": ("gelu", {}, {"x"}, BOTH),
    "relu_gradient_at_negatives": ("relu", {}, {"x"}, BOTH),
    "leaky_relu_slope_dropped": ("leaky_relu", {}, {"x"}, BOTH),
    "leaky_relu_slope_times_input": ("leaky_relu", {}, {"x"}, BOTH),
    "softmax_missing_sum_term": ("softmax", {}, {"x"}, BOTH),
    "softmax_sum_over_wrong_axis": ("softmax", {}, {"x"}, BOTH),
    "log_softmax_elementwise_sum": ("log_softmax", {}, {"x"}, BOTH),
    "log_softmax_uniform_weights": ("log_softmax", {}, {"x"}, BOTH),
    "cross_entropy_missing_batch_mean": ("softmax_cross_entropy", {}, {"logits"}, BOTH),
    "cross_entropy_forgets_one_hot": ("softmax_cross_entropy", {}, {"logits"}, BOTH),
    "cross_entropy_sign_error": ("softmax_cross_entropy", {}, {"logits"}, BOTH),
    "cross_entropy_last_class_never_labelled": ("softmax_cross_entropy", {}, {"logits"}, BOTH),
    "attention_missing_scale": ("attention", {}, {"q", "k"}, BOTH),
    "attention_forgets_causal_mask": ("attention", {}, {"q", "k", "v"}, BOTH),
    "attention_softmax_missing_sum_term": ("attention", {}, {"q", "k"}, BOTH),
    "layernorm_dgamma_uses_x": ("layernorm", {}, {"gamma"}, BOTH),
    "layernorm_missing_mean_term": ("layernorm", {}, {"x"}, BOTH),
    "layernorm_gamma_applied_twice": ("layernorm", {}, {"x"}, BOTH),
    "batchnorm_stats_as_constants": ("batchnorm", {}, {"x"}, BOTH),
    "batchnorm_missing_variance_path": ("batchnorm", {}, {"x"}, BOTH),
    "batchnorm_missing_mean_path": ("batchnorm", {}, {"x"}, BOTH),
    "batchnorm_unbiased_variance": ("batchnorm", {}, {"x"}, BOTH),
    "batchnorm_dgamma_from_raw_input": ("batchnorm", {}, {"gamma"}, BOTH),
    "batchnorm_cached_swapped_affine": ("batchnorm_cached", {}, {"gamma", "beta"}, BOTH),
    "batchnorm_cached_forgets_gamma": ("batchnorm_cached", {}, {"x"}, BOTH),
    "maxpool_routes_to_window_corner": ("maxpool2d", {}, {"x"}, BOTH),
    # ties exist only among the special values
    "maxpool_ties_double_counted": ("maxpool2d", {}, {"x"}, ("special",)),
    "avgpool_divides_by_kernel_not_area": ("avgpool2d", {}, {"x"}, BOTH),
    "avgpool_assigns_overlapping_windows": ("avgpool2d", {}, {"x"}, BOTH),
    "embedding_last_write_wins": ("embedding", {}, {"weight"}, BOTH),
    "embedding_drops_last_row": ("embedding", {}, {"weight"}, BOTH),
    "mse_missing_factor_two": ("mse_loss", {}, {"pred", "target"}, BOTH),
    "mse_divides_by_batch_not_elements": ("mse_loss", {}, {"pred", "target"}, BOTH),
    "mse_target_gradient_sign": ("mse_loss", {}, {"target"}, BOTH),
    "dropout_forgets_scale": ("dropout", {}, {"x"}, BOTH),
    "dropout_uses_keep_probability": ("dropout", {}, {"x"}, BOTH),
}


def _mutant_spec(folder: Path, mutant: str, spec: str, edits: dict[str, str]) -> None:
    text = (SPECS / f"{spec}.yaml").read_text()
    text, n = re.subn(r"^backward: .*$", f"backward: buggy_layers:{mutant}", text, flags=re.MULTILINE)
    assert n == 1
    text, n = re.subn(r"^name: .*$", f"name: {mutant}", text, flags=re.MULTILINE)
    assert n == 1
    # the corpus is about first-order backward bugs; a buggy backward is no forward to check
    text = re.sub(r"^second_order:.*\n(  .*\n)*", "", text, flags=re.MULTILINE)
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    (folder / f"{mutant}.yaml").write_text(text)


def _run_corpus(folder: Path, *flags: str) -> dict[str, list[dict[str, Any]]]:
    from specgrad.cli import main

    shutil.copy(BUGGY, folder / "buggy_layers.py")
    for mutant, (spec, edits, _, _) in MUTANTS.items():
        _mutant_spec(folder, mutant, spec, edits)
    report = folder / "report.json"
    code = main(["validate", str(folder), "--json", str(report), "-q", *flags])
    assert code == 1
    by_spec: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for check in json.loads(report.read_text())["checks"]:
        by_spec[check["spec"]].append(check)
    return by_spec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return _run_corpus(tmp_path_factory.mktemp("mutants"))


def test_the_corpus_is_large_and_every_mutant_ran(corpus) -> None:  # type: ignore[no-untyped-def]
    by_spec = corpus
    assert len(MUTANTS) >= 40
    assert set(by_spec) == set(MUTANTS)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught_and_named(corpus, mutant: str) -> None:  # type: ignore[no-untyped-def]
    by_spec = corpus
    _, _, wrong, cases = MUTANTS[mutant]
    checks = by_spec[mutant]
    failing = {c["target"] for c in checks if c["status"] != "PASS"} - {"contract.taylor"}
    assert failing == wrong, [(c["id"], c["message"][:200]) for c in checks if c["status"] != "PASS"]
    for dtype in ("float32", "float64"):
        for case in cases:
            caught = [
                c
                for c in checks
                if (c["dtype"], c["case"]) == (dtype, case) and c["target"] in wrong and c["status"] == "FAIL"
            ]
            assert caught, f"{mutant} not caught in {dtype}/{case}"
            assert all("figures" in c for c in caught)


def test_fast_mode_catches_every_mutant_too(tmp_path: Path) -> None:
    """Directional checks (--fast): k projections per tensor instead of every element."""
    by_spec = _run_corpus(tmp_path, "--fast")
    missed = [
        (mutant, dtype, case)
        for mutant, (_, _, wrong, cases) in MUTANTS.items()
        for dtype in ("float32", "float64")
        for case in cases
        if not any(
            (c["dtype"], c["case"]) == (dtype, case) and c["target"] in wrong and c["status"] == "FAIL"
            for c in by_spec[mutant]
        )
    ]
    assert not missed
    methods = {c.get("method") for checks in by_spec.values() for c in checks if c["kind"] == "gradient"}
    assert "directional" in methods
