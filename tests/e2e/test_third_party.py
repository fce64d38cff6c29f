"""Layer code in the idioms of real from-scratch libraries, bound by specs without changing
a line of it: nnfs-style objects that store rather than return, CS231n-style cached
functions with a hyper-parameter dict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "third_party"

NNFS_DENSE = """\
specgrad: 1
name: nnfs_dense
description: nnfs Layer_Dense; forward stores self.output, backward stores self.d*
convention: layer
layer:
  class: nnfs_style:{cls}
  init: {{n_inputs: 6, n_neurons: 4}}
  output: output
  input_grads: {{inputs: dinputs}}
  params:
    weights: {{value: weights, grad: dweights}}
    biases: {{value: biases, grad: dbiases}}
inputs:
  inputs: {{shape: [5, 6]}}
parameters:
  weights: {{shape: [6, 4]}}
  biases: {{shape: [1, 4]}}
"""

NNFS_SOFTMAX = """\
specgrad: 1
name: nnfs_softmax
description: nnfs Activation_Softmax with its per-sample Jacobian backward
convention: layer
layer:
  class: nnfs_style:Activation_Softmax
  output: output
  input_grads: {inputs: dinputs}
inputs:
  inputs: {shape: [3, 5]}
"""

CS231N = """\
specgrad: 1
name: cs231n_{name}
description: CS231n-style cached layer
convention: cached
forward: cs231n_style:{name}_forward{suffix}
backward: cs231n_style:{name}_backward{suffix}
inputs:
  x: {{shape: {x}}}
parameters:
  w: {{shape: {w}}}
  b: {{shape: {b}}}
attrs: {attrs}
"""


def _run(tmp_path: Path, cli, text: str):  # type: ignore[no-untyped-def]
    for source in HERE.glob("*.py"):
        shutil.copy(source, tmp_path / source.name)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    report = tmp_path / "r.json"
    result = cli("validate", spec, "--json", report)
    checks = json.loads(report.read_text())["checks"]
    return result, {c["target"] for c in checks if c["status"] in ("FAIL", "ERROR")}


def test_nnfs_dense_passes(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result, failing = _run(tmp_path, cli, NNFS_DENSE.format(cls="Layer_Dense"))
    assert result.code == 0 and not failing, result.text


def test_nnfs_dense_bias_bug_is_caught(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result, failing = _run(tmp_path, cli, NNFS_DENSE.format(cls="Layer_Dense_Buggy"))
    assert result.code == 1 and failing == {"biases", "contract.taylor"}, result.text


def test_nnfs_softmax_passes(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result, failing = _run(tmp_path, cli, NNFS_SOFTMAX)
    assert result.code == 0 and not failing, result.text


def test_nnfs_forward_returning_none_without_output_path(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result, _ = _run(tmp_path, cli, NNFS_SOFTMAX.replace("  output: output\n", ""))
    assert result.code == 1
    assert (
        "output 0 is None, not a numpy array (if forward stores its result instead of returning it, set layer.output)"
        in result.out
    )


@pytest.mark.parametrize(
    "name, suffix, x, w, b, attrs",
    [
        ("affine", "", "[4, 2, 3]", "[6, 5]", "[5]", "{}"),
        ("conv", "_naive", "[2, 3, 5, 5]", "[4, 3, 3, 3]", "[4]", "{conv_param: {stride: 2, pad: 1}}"),
    ],
)
def test_cs231n_cached_layers_pass(
    tmp_path: Path,
    cli,
    name: str,
    suffix: str,
    x: str,
    w: str,
    b: str,  # type: ignore[no-untyped-def]
    attrs: str,
) -> None:
    text = CS231N.format(name=name, suffix=suffix, x=x, w=w, b=b, attrs=attrs)
    result, failing = _run(tmp_path, cli, text)
    assert result.code == 0 and not failing, result.text


FROZEN = """\
specgrad: 1
name: frozen
description: a layer with a frozen buffer that has no gradient
convention: layer
layer:
  class: nnfs_style:Layer_Dense
  init: {n_inputs: 6, n_neurons: 4}
  output: output
  input_grads: {inputs: dinputs}
  params:
    weights: {value: weights, grad: dweights}
    biases: {value: biases}
inputs:
  inputs: {shape: [5, 6]}
parameters:
  weights: {shape: [6, 4]}
  biases: {shape: [1, 4], grad: false}
"""


def test_frozen_parameter_without_gradient_path(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result, failing = _run(tmp_path, cli, FROZEN)
    assert result.code == 0 and not failing, result.text
    assert "biases" not in cli("list", tmp_path / "spec.yaml").out


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (
            ("backward: backward", "backward: backwards"),
            r"spec\.yaml:\d+:\d+: layer\.backward: the layer has no method 'backwards' \(did you mean 'backward'\?\)",
        ),
        (
            ("init: {n_inputs: 6, n_neurons: 4}", "init: {n_input: 6, n_neurons: 4}"),
            r"spec\.yaml:7:9: layer\.init: nnfs_style:Layer_Dense\(n_inputs, n_neurons\): .*n_input",
        ),
        (
            ("weights: {value: weights, grad: dweights}", "weights: {value: weight, grad: dweights}"),
            r"spec\.yaml:\d+:\d+: layer\.params\.weights\.value: cannot read 'weight'.*is the path misspelled\?",
        ),
        (
            ("weights: {value: weights, grad: dweights}", "weights: {value: weights, grad: dweight}"),
            r"spec\.yaml:12:37: layer\.params\.weights\.grad: cannot read 'dweight'.*is the path misspelled\?",
        ),
        (
            ("output: output", "output: outptu"),
            r"spec\.yaml:8:11: layer\.output: cannot read 'outptu'.*is the path misspelled\?",
        ),
        (
            ("input_grads: {inputs: dinputs}", "input_grads: {inputs: dinput}"),
            r"spec\.yaml:\d+:\d+: layer\.input_grads\.inputs: cannot read 'dinput'",
        ),
        (
            ("weights: {value: weights, grad: dweights}", "weights: {value: frozen, grad: dweights}"),
            r"layer\.params\.weights\.value: cannot set 'frozen'.*it must be settable",
        ),
    ],
)
def test_layer_binding_mistakes_are_located_spec_errors(
    tmp_path: Path,
    cli,
    edit: tuple[str, str],  # type: ignore[no-untyped-def]
    pattern: str,
) -> None:
    import re

    text = NNFS_DENSE.format(cls="Layer_Dense").replace(
        "  output: output\n", "  output: output\n  backward: backward\n"
    )
    assert edit[0] in text
    for source in HERE.glob("*.py"):
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "spec.yaml").write_text(text.replace(*edit))
    result = cli("validate", tmp_path / "spec.yaml")
    assert result.code == 2, result.text
    assert re.search(pattern, result.out), result.out


LSTM = """\
specgrad: 1
name: cs231n_lstm_step
description: CS231n LSTM step; forward returns (next_h, next_c, cache), backward(dnext_h, dnext_c, cache)
convention: cached
forward: cs231n_style:lstm_step_forward
backward: cs231n_style:{backward}
inputs:
  x: {{shape: [3, 4]}}
  prev_h: {{shape: [3, 5]}}
  prev_c: {{shape: [3, 5]}}
parameters:
  Wx: {{shape: [4, 20]}}
  Wh: {{shape: [5, 20]}}
  b: {{shape: [20]}}
"""


@pytest.mark.parametrize(
    "backward, wrong",
    [("lstm_step_backward", set()), ("lstm_step_backward_buggy", {"prev_c", "contract.taylor"})],
)
def test_cs231n_lstm_with_two_outputs_and_a_cache(
    tmp_path: Path,
    cli,
    backward: str,  # type: ignore[no-untyped-def]
    wrong: set[str],
) -> None:
    result, failing = _run(tmp_path, cli, LSTM.format(backward=backward))
    assert failing == wrong, result.text
    assert result.code == (1 if wrong else 0)
