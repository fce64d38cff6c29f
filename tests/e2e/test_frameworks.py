"""End to end: shared specs across frameworks, the agreement check, forward mode, spec
packages. Tests that need torch or jax skip with the reason where it is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, dedent, run_subprocess

EXAMPLE = REPO / "examples" / "shared_spec"

try:
    import torch
except ImportError:
    torch = None
try:
    import jax
except ImportError:
    jax = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed: pip install torch==2.13.0")
needs_jax = pytest.mark.skipif(jax is None, reason="jax is not installed: pip install jax")

LAYERS = """\
import numpy as np

def forward(x, w):
    return x @ w

def backward(g, x, w):
    return g @ w.T, x.T @ g

def scaled_forward(x, w):
    return 1.001 * (x @ w)

def scaled_backward(g, x, w):
    return 1.001 * (g @ w.T), 1.001 * (x.T @ g)

def wrong_backward(g, x, w):
    return g @ w.T, 1.01 * (x.T @ g)

def relu(x):
    return np.maximum(x, 0)

def relu_backward(g, x):
    return g * (x > 0)

def relu_half_backward(g, x):
    return g * np.where(x == 0, 0.5, x > 0)

def relu_two_backward(g, x):
    return g * np.where(x == 0, 2.0, x > 0)
"""

SHARED = """\
specgrad: 1
name: mm
description: x @ w, three teams
inputs:
  x: {shape: [3, 5]}
parameters:
  w: {shape: [5, 4]}
dtypes: [float32, float64]
implementations:
  reference: {forward: layers:forward, backward: layers:backward}
  scaled: {forward: layers:scaled_forward, backward: layers:scaled_backward}
  wrong: {forward: layers:forward, backward: layers:wrong_backward}
"""


def _report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def _by_id(doc: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {c["id"]: c for c in doc["checks"]}


def test_agreement_catches_a_forward_bug_its_own_checks_cannot(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """`scaled` is wrong (1.001 x) but self-consistent: its own checks pass, agreement fails;
    `wrong` has a backward bug: its own gradient check and agreement both fail."""
    write("layers.py", LAYERS)
    write("mm.yaml", SHARED)
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "--json", report, "-j", "1")
    assert result.code == 1
    checks = _by_id(_report(report))
    for dtype in ("float32", "float64"):
        own = [c for i, c in checks.items() if i.startswith(f"mm@scaled[{dtype},")]
        assert own and all(c["status"] in ("PASS", "SKIP") for c in own)
        agree = checks[f"mm[{dtype},random]::agree.scaled"]
        assert agree["status"] == "FAIL" and agree["kind"] == "agreement"
        assert "scaled disagrees with reference (the reference) on identical inputs" in agree["message"]
        assert "output 0: differs" in agree["message"] and "gradient of w: differs" in agree["message"]
        assert checks[f"mm@wrong[{dtype},random]::w"]["status"] == "FAIL"
        wrong = checks[f"mm[{dtype},random]::agree.wrong"]
        assert wrong["status"] == "FAIL" and "gradient of w" in wrong["message"]
        assert "output 0" not in wrong["message"] and "gradient of x" not in wrong["message"]
    assert "scaled disagrees" in result.out  # the console shows the failure block


def test_agreement_passes_rounding_differences_and_kinks(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """Two valid subgradients at relu's kink agree (counted); a value outside the one-sided
    derivatives does not, and its own check fails too."""
    write("layers.py", LAYERS)
    write(
        "relu.yaml",
        """\
        specgrad: 1
        name: relu
        description: relu, three choices at 0
        inputs:
          x: {shape: [4, 6]}
        dtypes: [float16, float32, float64]
        implementations:
          zero: {forward: layers:relu, backward: layers:relu_backward}
          half: {forward: layers:relu, backward: layers:relu_half_backward}
          two: {forward: layers:relu, backward: layers:relu_two_backward}
        """,
    )
    report = tmp_path / "r.json"
    assert cli("validate", tmp_path, "--json", report, "-j", "1").code == 1
    checks = _by_id(_report(report))
    for dtype in ("float16", "float32", "float64"):
        half = checks[f"relu[{dtype},special]::agree.half"]
        assert half["status"] == "PASS" and half["kinks"] > 0, half
        assert "different subgradients" in half["note"]
        assert checks[f"relu[{dtype},special]::agree.two"]["status"] == "FAIL"
        assert checks[f"relu@two[{dtype},special]::x"]["status"] == "FAIL"
        assert checks[f"relu[{dtype},random]::agree.two"]["status"] == "PASS"  # no zeros there


def test_hand_set_agreement_tolerance_replaces_the_budget(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    write("mm.yaml", SHARED + "agreement:\n  float64: {rtol: 0.01, reason: a 1.001 scale is accepted here}\n")
    report = tmp_path / "r.json"
    cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "agree")
    checks = _by_id(_report(report))
    assert checks["mm[float64,random]::agree.scaled"]["status"] == "PASS"
    assert checks["mm[float32,random]::agree.scaled"]["status"] == "FAIL"


def test_an_implementation_that_cannot_be_imported_stops_only_itself(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    write("mm.yaml", SHARED.replace("layers:wrong_backward", "missing_module:backward"))
    for jobs in ("1", "2"):
        report = tmp_path / f"r{jobs}.json"
        result = cli("validate", tmp_path, "--json", report, "-j", jobs)
        assert result.code == 2, result.text
        doc = _report(report)
        assert len(doc["spec_errors"]) == 1
        assert "implementations.wrong.backward" in doc["spec_errors"][0]["field"]
        assert "cannot import module 'missing_module'" in doc["spec_errors"][0]["message"]
        checks = _by_id(doc)
        assert checks["mm@scaled[float64,random]::w"]["status"] == "PASS"
        assert checks["mm[float64,random]::agree.wrong"]["status"] == "ERROR"
        assert "could not be bound" in checks["mm[float64,random]::agree.wrong"]["message"]


def test_unavailable_framework_is_skipped_with_the_reason(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy is installed")
    except ImportError:
        pass
    write("layers.py", LAYERS)
    write("mm.yaml", SHARED.replace("scaled: {forward", "scaled: {framework: cupy, forward"))
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "not wrong")
    assert result.code == 0, result.text
    checks = _by_id(_report(report))
    skipped = [c for i, c in checks.items() if i.startswith("mm@scaled")]
    assert skipped and all(c["status"] == "SKIP" and "cupy is not installed" in c["message"] for c in skipped)
    assert checks["mm[float64,random]::agree.scaled"]["status"] == "SKIP"
    assert "implementation scaled not run: cupy is not installed" in result.out
    assert result.out.rstrip().splitlines()[-1].endswith("skipped")


def test_parallel_runs_give_the_same_figures(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    write("mm.yaml", SHARED)
    docs = []
    for jobs in ("1", "3"):
        report = tmp_path / f"r{jobs}.json"
        cli("validate", tmp_path, "--json", report, "-j", jobs)
        docs.append([{k: v for k, v in c.items() if k != "duration_s"} for c in _report(report)["checks"]])
    assert docs[0] == docs[1]


def test_framework_versions_are_reported(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("layers.py", LAYERS)
    write("mm.yaml", SHARED + "verified_with: {numpy: '0.0.1'}\n")
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "reference")
    doc = _report(report)
    numpy = doc["frameworks"]["mm"]["numpy"]
    assert numpy["verified_with"] == "0.0.1" and numpy["installed"] == __import__("numpy").__version__
    assert f"verified with numpy 0.0.1, checked with numpy {numpy['installed']}: mm" in result.out


def test_specs_from_a_package_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pkg = site / "teamlayers"
    (pkg / "specs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "specs" / "__init__.py").write_text("")
    (site / "layers.py").write_text(LAYERS)
    (pkg / "specs" / "mm.yaml").write_text(dedent(SHARED))
    dist = site / "teamlayers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: teamlayers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[specgrad.specs]\nteam = teamlayers.specs\n")
    result = run_subprocess(["list", "--from-package", "team"], cwd=tmp_path, path=[site])
    assert result.code == 0, result.err
    assert "mm@reference[float32,random]::x" in result.out.splitlines()
    bad = run_subprocess(["list", "--from-package", "teem"], cwd=tmp_path, path=[site])
    assert bad.code == 2 and "no installed package registers specs as 'teem' (did you mean 'team'?" in bad.err
    none = run_subprocess(["list"], cwd=tmp_path, path=[site])
    assert none.code == 2 and "give spec files or folders, or --from-package NAME" in none.err


@needs_torch
def test_worked_example_runs_as_documented(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """README's example: the torch team's self-consistent wrong forward is caught only by
    agreement; with it fixed everything passes; a backward-only bug is caught by both."""
    folder = tmp_path / "shared_spec"
    shutil.copytree(EXAMPLE, folder)
    report = tmp_path / "r.json"
    result = cli("validate", folder, "--json", report, "-j", "1")
    assert result.code == 1
    checks = _report(report)["checks"]
    assert all(c["status"] == "PASS" for c in checks if c["kind"] != "agreement")
    agree = [c for c in checks if c["kind"] == "agreement"]
    assert len(agree) == 6 and all(c["status"] == "FAIL" for c in agree)
    assert "torch disagrees with numpy (the reference) on identical inputs" in result.out
    assert result.out.rstrip().splitlines()[-1] == "144 passed, 6 failed"

    # the team's module is imported in this process: the edited versions run in fresh ones
    team = folder / "torch_team.py"
    team.write_text(team.read_text().replace("SWISH_BETA = 1.702", "SWISH_BETA = 1.0"))
    fixed = run_subprocess(["validate", str(folder), "-j", "1"], cwd=tmp_path)
    assert fixed.code == 0, fixed.out[-2000:]

    team.write_text(team.read_text().replace("z * s * (1 - s)", "z * s"))
    result = run_subprocess(["validate", str(folder), "--json", str(report), "-j", "1"], cwd=tmp_path)
    assert result.code == 1
    checks = _by_id(_report(report))
    assert checks["swish_dense@torch[float64,random]::x"]["status"] == "FAIL"
    agree = checks["swish_dense[float64,random]::agree.torch"]
    assert (
        agree["status"] == "FAIL"
        and "gradient of x" in agree["message"]
        and "output 0" not in agree["message"]
    )


@needs_torch
def test_torch_contract_errors_name_the_framework(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write(
        "tl.py",
        """\
        import numpy as np
        import torch

        def forward(x, w):
            return (x @ w).numpy()

        def backward(g, x, w):
            return g @ w.T, x.T @ g
        """,
    )
    write(
        "s.yaml",
        SHARED.split("implementations:")[0]
        + "framework: torch\nforward: tl:forward\nbackward: tl:backward\n",
    )
    report = tmp_path / "r.json"
    cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "float64 and random")
    checks = _by_id(_report(report))
    message = checks["mm[float64,random]::contract.forward_output"]["message"]
    assert "forward returned a numpy.ndarray where a torch.Tensor was expected" in message


JVP_LAYERS = """\
import jax
import jax.numpy as jnp
import torch


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * x * g

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_tensors
        return FACTOR * x * x * dx


FACTOR = 3.0


def torch_cube(x):
    return Cube.apply(x)


@jax.custom_jvp
def jax_cube(x):
    return x ** 3


@jax_cube.defjvp
def _cube_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return x ** 3, FACTOR * x * x * dx
"""


@needs_torch
@needs_jax
@pytest.mark.parametrize("factor", [3.0, 2.9])
def test_jvp_checks_forward_mode_rules(tmp_path: Path, write, cli, factor: float) -> None:  # type: ignore[no-untyped-def]
    write("fl.py", JVP_LAYERS.replace("FACTOR = 3.0", f"FACTOR = {factor}"))
    write(
        "cube.yaml",
        """\
        specgrad: 1
        name: cube
        description: x^3 with custom forward-mode rules
        inputs:
          x: {shape: [3, 4]}
        dtypes: [float32, float64]
        implementations:
          torch: {framework: torch, forward: fl:torch_cube, backward: autograd, jvp: autograd}
          jax: {framework: jax, forward: fl:jax_cube, backward: autograd, jvp: autograd}
        """,
    )
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "jvp")
    jvp = [c for c in _report(report)["checks"] if c["target"] == "contract.jvp"]
    assert len(jvp) == 12
    if factor == 3.0:
        assert result.code == 0 and all(c["status"] == "PASS" for c in jvp), result.text
    else:
        assert all(c["status"] == "FAIL" for c in jvp), result.text
        assert "forward mode (jvp) of torch disagrees with differences" in result.out
        assert "forward mode (jvp) of jax disagrees with differences" in result.out


MODULES = """\
import torch


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s, (g * x).sum(0) * FACTOR


FACTOR = 1.0


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)
        self.scale = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return Scale.apply(torch.tanh(self.lin(x)), self.scale)
"""

BLOCK = """\
specgrad: 1
name: block
description: a torch module with a custom Function inside
framework: torch
convention: layer
layer:
  class: mods:Block
  init: {width: 6}
  backward: autograd
  params:
    w: {value: lin.weight}
    b: {value: lin.bias}
    s: {value: scale}
inputs:
  x: {shape: [3, 6]}
parameters:
  w: {shape: [6, 6]}
  b: {shape: [6]}
  s: {shape: [6]}
dtypes: [float64]
"""


@needs_torch
@pytest.mark.parametrize(("factor", "code"), [(1.0, 0), (1.01, 1)])
def test_torch_module_with_autograd(tmp_path: Path, write, cli, factor: float, code: int) -> None:  # type: ignore[no-untyped-def]
    """An nn.Module is a layer whose parameters the spec's tensors replace (functional_call);
    the custom Function inside it is what gets checked."""
    write("mods.py", MODULES.replace("FACTOR = 1.0", f"FACTOR = {factor}"))
    write("block.yaml", BLOCK)
    report = tmp_path / "r.json"
    result = run_subprocess(["validate", str(tmp_path), "--json", str(report), "-j", "1"], cwd=tmp_path)
    assert result.code == code, result.out[-3000:]
    checks = _by_id(_report(report))
    if code:
        assert checks["block[float64,random]::s"]["status"] == "FAIL"
        assert all(checks[f"block[float64,random]::{t}"]["status"] == "PASS" for t in ("x", "w", "b"))


@needs_torch
def test_torch_module_parameter_paths_are_checked(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write("mods.py", MODULES)
    write("block.yaml", BLOCK.replace("lin.weight", "lin.wieght"))
    result = cli("validate", tmp_path, "-j", "1")
    assert result.code == 2
    assert (
        "block.yaml:11:16: layer.params.w.value: the layer has no parameter or buffer 'lin.wieght' "
        "(did you mean 'lin.weight'?)" in result.out
    )
    lint = cli("lint", tmp_path)
    assert lint.code == 0  # lint imports no code; the path is checked when the layer is built
    bad = cli(
        "lint",
        write(
            "bad.yaml", BLOCK.replace("    s: {value: scale}", "    s: {value: scale, grad: scale.grad}")
        ).parent,
    )
    assert "layer.params.s.grad: with backward: autograd the gradient comes from autodiff" in bad.out


def test_a_bug_confined_to_the_float32_path_disagrees(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """Wrong by 3e-5 relative in float32 only, its backward consistent: the measured
    deviation of the implementation itself is not taken as its rounding allowance."""
    write(
        "layers.py",
        LAYERS
        + dedent(
            """
            def f32_forward(x, w):
                c = np.float32(1 + 3e-5) if x.dtype == np.float32 else 1.0
                return c * (x @ w)

            def f32_backward(g, x, w):
                c = np.float32(1 + 3e-5) if x.dtype == np.float32 else 1.0
                return c * (g @ w.T), c * (x.T @ g)
            """
        ),
    )
    write(
        "mm.yaml",
        SHARED.replace(
            "layers:scaled_forward, backward: layers:scaled_backward",
            "layers:f32_forward, backward: layers:f32_backward",
        ),
    )
    report = tmp_path / "r.json"
    cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "scaled")
    checks = _by_id(_report(report))
    for case in ("random", "wide", "special"):
        assert checks[f"mm[float32,{case}]::agree.scaled"]["status"] == "FAIL"
        assert checks[f"mm[float64,{case}]::agree.scaled"]["status"] == "PASS"
        assert checks[f"mm@scaled[float32,{case}]::w"]["status"] == "PASS"


def test_kinks_beyond_the_first_sample_are_probed(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """Hundreds of elements at relu's kink, two valid subgradients: agreement holds."""
    write("layers.py", LAYERS)
    write(
        "relu.yaml",
        """\
        specgrad: 1
        name: relu
        description: many kinks
        inputs:
          x: {shape: [32, 32]}
        dtypes: [float32]
        cases: [special]
        implementations:
          zero: {forward: layers:relu, backward: layers:relu_backward}
          half: {forward: layers:relu, backward: layers:relu_half_backward}
        """,
    )
    report = tmp_path / "r.json"
    cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "agree")
    agree = _by_id(_report(report))["relu[float32,special]::agree.half"]
    assert agree["status"] == "PASS" and agree["kinks"] > 64, agree


LARGE = """\
import numpy as np


def lse(x):
    m = x.max(-1, keepdims=True)
    return (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)[..., 0]


def lse_backward(g, x):
    p = np.exp(x - x.max(-1, keepdims=True))
    return g[..., None] * p / p.sum(-1, keepdims=True)


def lse_torch(x):
    import torch

    return torch.logsumexp(x, -1)


def lse_jax(x):
    import jax

    return jax.nn.logsumexp(x, axis=-1)


def two(x):
    import torch

    return 2 * x, torch.relu(x), (x > 0).sum()


def sdpa(q, k, v, causal=False):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
"""


@needs_torch
@needs_jax
def test_no_false_alarm_where_algorithms_round_differently(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """logsumexp of logits ~30: torch's exp(x - lse) rounds ~100 u off where numpy's is
    exact, both correct; torch's fused attention rounds ds at a saturated softmax where
    numpy's is exact; several outputs (one integer) and forward mode."""
    write("lay.py", LARGE)
    write(
        "lse.yaml",
        """\
        specgrad: 1
        name: lse
        description: logsumexp of large logits
        inputs:
          x: {shape: [4, 64], fill: {kind: normal, std: 30}}
        dtypes: [float16, float32, float64]
        implementations:
          numpy: {forward: lay:lse, backward: lay:lse_backward}
          torch: {framework: torch, forward: lay:lse_torch, backward: autograd, jvp: autograd}
          jax: {framework: jax, forward: lay:lse_jax, backward: autograd, jvp: autograd}
        """,
    )
    write(
        "two.yaml",
        """\
        specgrad: 1
        name: two
        description: three outputs, one integer, with forward mode
        inputs:
          x: {shape: [4, 6]}
        framework: torch
        forward: lay:two
        backward: autograd
        jvp: autograd
        """,
    )
    write(
        "sdpa.yaml",
        """\
        specgrad: 1
        name: sdpa
        description: torch's fused attention (flash on CPU) against the zoo's, saturated in the wide case
        inputs:
          q: {shape: [1, 2, 6, 8]}
          k: {shape: [1, 2, 6, 8]}
          v: {shape: [1, 2, 6, 8]}
        attrs: {causal: true}
        dtypes: [float16, float32, float64]
        implementations:
          numpy: {forward: "specgrad.zoo.attention:forward", backward: "specgrad.zoo.attention:backward"}
          torch: {framework: torch, forward: lay:sdpa, backward: autograd}
        """,
    )
    result = run_subprocess(["validate", str(tmp_path), "-j", "2"], cwd=tmp_path)
    assert result.code == 0, result.out[-3000:]


@needs_torch
def test_torch_layer_objects(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """A plain class holding torch tensors, with a hand-written backward, is checked; an
    nn.Module with one is a located error (its parameters cannot be set)."""
    write(
        "tl.py",
        """\
        import torch

        class Plain:
            def __init__(self, n):
                self.w = torch.zeros(n, n)

            def forward(self, x):
                self.x = x
                return x @ self.w

            def backward(self, g):
                self.dw = self.x.T @ g
                return g @ self.w.T

        class Module(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(n, n))

            def forward(self, x):
                self.x = x
                return x @ self.w

            def backward(self, g):
                self.dw = self.x.T @ g
                return g @ self.w.T
        """,
    )
    spec = """\
        specgrad: 1
        name: NAME
        description: a torch layer object
        framework: torch
        convention: layer
        layer:
          class: tl:CLASS
          init: {n: 3}
          params:
            w: {value: w, grad: dw}
        inputs:
          x: {shape: [2, 3]}
        parameters:
          w: {shape: [3, 3]}
        dtypes: [float64]
        """
    write("plain/s.yaml", spec.replace("NAME", "plain").replace("CLASS", "Plain"))
    shutil.copy(tmp_path / "tl.py", tmp_path / "plain" / "tl.py")
    assert cli("validate", tmp_path / "plain", "-j", "1").code == 0
    write("module/s.yaml", spec.replace("NAME", "module").replace("CLASS", "Module"))
    shutil.copy(tmp_path / "tl.py", tmp_path / "module" / "tl.py")
    result = cli("validate", tmp_path / "module", "-j", "1")
    assert result.code == 2
    assert (
        "layer.backward: Module is a torch module: its parameters are swapped in for a call only with layer.backward: autograd"
        in result.out
    )


@needs_jax
def test_jax_namedtuple_outputs(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write(
        "jl.py",
        """\
        import jax.numpy as jnp

        def slogdet(a):
            return jnp.linalg.slogdet(a)
        """,
    )
    write(
        "s.yaml",
        """\
        specgrad: 1
        name: slogdet
        description: sign and log|det|, a namedtuple
        framework: jax
        forward: jl:slogdet
        backward: autograd
        inputs:
          a: {shape: [3, 3]}
        dtypes: [float64]
        cases: [random]
        """,
    )
    result = cli("validate", tmp_path, "-j", "1")
    assert result.code == 0, result.text


def test_a_float64_path_computed_in_float32_fails_float64_only(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    """As jax's dot_product_attention does: float64 in, softmax in float32 inside. Its float64
    results are off by float32 rounding, which is a float64 disagreement but within a
    float32 or float16 check's allowance; overflowing alike is agreement."""
    write(
        "layers.py",
        LAYERS
        + dedent(
            """
            def downcast(x, w):
                return (x.astype(np.float32) @ w.astype(np.float32)).astype(x.dtype)

            def downcast_backward(g, x, w):
                g32, x32, w32 = (a.astype(np.float32) for a in (g, x, w))
                return (g32 @ w32.T).astype(x.dtype), (x32.T @ g32).astype(x.dtype)

            def overflow(x, w):
                return np.exp(40 * (x @ w))

            def overflow_backward(g, x, w):
                y = np.exp(40 * (x @ w)) * 40 * g
                return y @ w.T, x.T @ y
            """
        ),
    )
    write(
        "mm.yaml",
        SHARED.replace("dtypes: [float32, float64]", "dtypes: [float16, float32, float64]").replace(
            "layers:scaled_forward, backward: layers:scaled_backward",
            "layers:downcast, backward: layers:downcast_backward",
        ),
    )
    report = tmp_path / "r.json"
    cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "agree.scaled")
    checks = _by_id(_report(report))
    for case in ("random", "wide", "special"):
        assert checks[f"mm[float64,{case}]::agree.scaled"]["status"] == "FAIL"
        assert checks[f"mm[float32,{case}]::agree.scaled"]["status"] == "PASS"
        assert checks[f"mm[float16,{case}]::agree.scaled"]["status"] == "PASS"
    write(
        "mm.yaml",
        SHARED.replace(
            "layers:forward, backward: layers:backward", "layers:overflow, backward: layers:overflow_backward"
        ).replace(
            "layers:scaled_forward, backward: layers:scaled_backward",
            "layers:overflow, backward: layers:overflow_backward",
        ),
    )
    cli("validate", tmp_path, "--json", report, "-j", "1", "-k", "agree.scaled and wide")
    checks = _by_id(_report(report))
    assert checks["mm[float32,wide]::agree.scaled"]["status"] == "PASS", checks[
        "mm[float32,wide]::agree.scaled"
    ]


@needs_torch
def test_forward_mode_a_framework_lacks_is_skipped_with_the_reason(tmp_path: Path, write, cli) -> None:  # type: ignore[no-untyped-def]
    write(
        "tl.py",
        """\
        import torch

        def dist(x, y):
            return torch.cdist(x, y)
        """,
    )
    write(
        "s.yaml",
        """\
        specgrad: 1
        name: dist
        description: pairwise distances; torch has no forward-mode rule for them
        framework: torch
        forward: tl:dist
        backward: autograd
        jvp: autograd
        inputs:
          x: {shape: [3, 4]}
          y: {shape: [5, 4]}
        dtypes: [float64]
        cases: [random]
        """,
    )
    report = tmp_path / "r.json"
    result = cli("validate", tmp_path, "--json", report, "-j", "1")
    jvp = _by_id(_report(report))["dist[float64,random]::contract.jvp"]
    assert (
        jvp["status"] == "SKIP"
        and "torch has no forward mode for an operation this forward uses" in jvp["message"]
    )
    assert result.code == 0, result.text
