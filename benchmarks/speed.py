"""Side by side, one process per framework, BLAS pinned to one thread: what it costs to
check every element of a layer's gradient.

    python benchmarks/speed.py [--repeat 3] [--only NAME]

Columns (median seconds, float64 throughout):
- floor: 2n forward calls, n the elements of every differentiable tensor (the least any
  per-element method without structure can cost);
- seed: the seed recipe (a copy of the tensor per element and side, L = sum(f * g));
- loop: specgrad's in-place per-element loop (`finite_diff.central_difference`, what
  `--mode per-element` differences with), every differentiable tensor;
- default: `specgrad validate`'s default for one case, in process: contracts, routes,
  structure detection, every element's difference (colored where the structure allows,
  cross-checked), the verdicts and the Taylor test;
- fast: the same case with `--mode fast` (seeded projections, not per element);
- gradcheck / gradcheck fast: torch.autograd.gradcheck, full and fast_mode, in a separate
  process (skipped with a note without torch; full is "not feasible" where its dense
  Jacobians would exceed 2 GiB).
Where the seed recipe, the loop or the floor would take minutes, they are timed on a
sample of elements per tensor and scaled to n (marked ~).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specgrad.backends import backend as get_backend  # noqa: E402
from specgrad.bindings import make_evaluator  # noqa: E402
from specgrad.compile import compile_spec  # noqa: E402
from specgrad.numerics.finite_diff import central_difference  # noqa: E402
from specgrad.process import tune_allocator  # noqa: E402
from specgrad.runner import CaseRun  # noqa: E402
from specgrad.validate import parse_spec  # noqa: E402

#: sampled elements per tensor where a per-element method would take longer than FULL_LIMIT
SAMPLE = 400
FULL_LIMIT = 20_000  # elements: above this the per-element columns are extrapolated
JACOBIAN_LIMIT = 2 * 2**30  # bytes of dense Jacobian torch's full gradcheck may build
#: runs of the millisecond columns (fast modes): their medians then span seconds, not a
#: moment of a noisy machine
QUICK_REPEAT = 41


@dataclass
class Case:
    name: str
    forward: str
    backward: str
    inputs: dict[str, list[int]]
    params: dict[str, list[int]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    torch: str = ""  # expression of torch.nn.functional / torch, over the tensors by name

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {**self.inputs, **self.params}

    @property
    def elements(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values())


CASES = [
    Case(
        "conv2d 3x3 pad 1, [1,3,64,64] -> 8 ch",
        "specgrad.zoo.conv:forward",
        "specgrad.zoo.conv:backward",
        {"x": [1, 3, 64, 64]},
        {"w": [8, 3, 3, 3], "b": [8]},
        {"stride": 1, "padding": 1},
        "F.conv2d(x, w, b, stride=1, padding=1)",
    ),
    Case(
        "conv2d [8,16,32,32] -> 16 ch",
        "specgrad.zoo.conv:forward",
        "specgrad.zoo.conv:backward",
        {"x": [8, 16, 32, 32]},
        {"w": [16, 16, 3, 3], "b": [16]},
        {"stride": 1, "padding": 1},
        "F.conv2d(x, w, b, stride=1, padding=1)",
    ),
    Case(
        "tanh [256,1024]",
        "specgrad.zoo.activations:tanh_forward",
        "specgrad.zoo.activations:tanh_backward",
        {"x": [256, 1024]},
        torch="torch.tanh(x)",
    ),
    Case(
        "linear [32,256] x [256,256]",
        "specgrad.zoo.linear:forward",
        "specgrad.zoo.linear:backward",
        {"x": [32, 256]},
        {"w": [256, 256], "b": [256]},
        torch="F.linear(x, w, b)",
    ),
    Case(
        "seed: conv2d [1,3,8,8] stride 2",
        "specgrad.zoo.conv:forward",
        "specgrad.zoo.conv:backward",
        {"x": [1, 3, 8, 8]},
        {"w": [4, 3, 3, 3], "b": [4]},
        {"stride": 2, "padding": 1},
        "F.conv2d(x, w, b, stride=2, padding=1)",
    ),
    Case(
        "seed: linear [1,16] -> 8",
        "specgrad.zoo.linear:forward",
        "specgrad.zoo.linear:backward",
        {"x": [1, 16]},
        {"w": [8, 16], "b": [8]},
        torch="F.linear(x, w, b)",
    ),
    Case(
        "seed: batchnorm [4,8,4,4]",
        "specgrad.zoo.norm:batchnorm_forward",
        "specgrad.zoo.norm:batchnorm_backward",
        {"x": [4, 8, 4, 4]},
        {"gamma": [8], "beta": [8]},
        {"eps": 1e-5},
        "F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)",
    ),
]


def tensors(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s) for n, s in case.shapes.items()}


def median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if times[-1] > 5:
            break  # one slow run is figure enough
    return statistics.median(times)


def per_element(case: Case, kind: str, repeat: int) -> tuple[float, bool]:
    """Seconds for the seed recipe, the in-place loop or the floor over every tensor,
    extrapolated from SAMPLE elements per tensor where there are too many."""
    module, attr = case.forward.split(":")
    forward = getattr(importlib.import_module(module), attr)
    t = tensors(case)
    names = list(case.shapes)
    attrs = case.attrs

    def f() -> Any:
        return forward(*[t[n] for n in names], **attrs)

    g = np.random.default_rng(1).normal(size=np.shape(f()))
    scaled = case.elements > FULL_LIMIT
    total = 0.0
    for name in names:
        x = t[name]
        picks = (
            np.linspace(0, x.size - 1, min(SAMPLE, x.size)).astype(int).tolist()
            if scaled
            else list(range(x.size))
        )

        def run(x: np.ndarray = x, picks: list[int] = picks, name: str = name) -> None:
            if kind == "loop":
                central_difference(lambda: (f(),), x, [g], 1e-5, 2.0**-53, np, picks)
            elif kind == "floor":
                for _ in range(2 * len(picks)):
                    f()
            else:  # the seed recipe: copies of the tensor, L = sum(f * g)
                for i in picks:
                    for sign in (1, -1):
                        moved = x.copy()
                        moved.flat[i] += sign * 1e-6
                        t[name] = moved
                        float(np.sum(f() * g))
                t[name] = x

        seconds = median(run, repeat)
        total += seconds * (x.size / len(picks))
    return total, scaled


def specgrad_case(case: Case, mode: str | None, repeat: int) -> tuple[float, str]:
    """Seconds for the whole default (or fast) check of one case, and its statuses."""
    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "specgrad": 1,
            "name": "bench",
            "description": case.name,
            "forward": case.forward,
            "backward": case.backward,
            "inputs": {n: {"shape": s} for n, s in case.inputs.items()},
            "parameters": {n: {"shape": s} for n, s in case.params.items()},
            "attrs": case.attrs,
            "dtypes": ["float64"],
            "cases": ["random"],
        }
        if not case.params:
            del doc["parameters"]
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        spec = parse_spec(path)
        (plan,) = compile_spec(spec, mode=mode)
        evaluator = make_evaluator(spec)
        backend = get_backend("cpu")
        statuses: list[str] = []

        def run() -> None:
            statuses[:] = [r.status.value for r in CaseRun(plan, evaluator, backend).run()]

        seconds = median(run, repeat)
    summary = "all PASS" if set(statuses) <= {"PASS", "SKIP"} else ", ".join(sorted(set(statuses)))
    return seconds, summary


def torch_figures(repeat: int, only: str | None) -> dict[str, dict[str, Any]]:
    """Run in a separate process: torch.autograd.gradcheck, full and fast_mode."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    out: dict[str, dict[str, Any]] = {}
    for case in CASES:
        if only and only not in case.name:
            continue
        t = {n: torch.tensor(a, requires_grad=True) for n, a in tensors(case).items()}
        names = list(t)

        def fn(*args: Any, case: Case = case, names: list[str] = names) -> Any:
            return eval(case.torch, {"F": F, "torch": torch}, dict(zip(names, args, strict=True)))

        args = tuple(t[n] for n in names)
        n_out = int(np.prod(fn(*args).shape))
        jacobian = 8 * n_out * case.elements
        figures: dict[str, Any] = {}
        if jacobian > JACOBIAN_LIMIT:
            figures["full"] = f"not feasible ({jacobian / 2**30:.0f} GiB)"
        else:
            figures["full"] = median(lambda fn=fn, args=args: torch.autograd.gradcheck(fn, args), repeat)
        figures["fast"] = median(
            lambda fn=fn, args=args: torch.autograd.gradcheck(fn, args, fast_mode=True),
            max(repeat, QUICK_REPEAT),
        )
        out[case.name] = figures
    return out


def main() -> None:
    tune_allocator()  # as `specgrad validate` does; every column runs in this tuned process
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="cases whose name contains this")
    parser.add_argument("--torch-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_json:
        print(json.dumps(torch_figures(args.repeat, args.only)))
        return
    cmd = [sys.executable, __file__, "--torch-json", "--repeat", str(args.repeat)]
    if args.only:
        cmd += ["--only", args.only]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    torch_out = json.loads(proc.stdout) if proc.returncode == 0 else {}
    if proc.returncode != 0:
        print(f"note: torch figures skipped ({proc.stderr.strip().splitlines()[-1:]})")

    def fmt(value: Any, approx: bool = False) -> str:
        if isinstance(value, str):
            return value
        if value is None:
            return "-"
        return ("~" if approx else "") + (f"{value:.3g}" if value < 100 else f"{value:.0f}")

    print(
        "| layer, input | elements | floor (2n calls) | seed recipe | per-element loop | loop / floor "
        "| specgrad default | default / seed | specgrad fast | gradcheck full | gradcheck fast "
        "| fast / gradcheck fast | verdicts |"
    )
    print("|" + "---|" * 13)
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        floor, scaled = per_element(case, "floor", args.repeat)
        seed, _ = per_element(case, "seed", args.repeat)
        loop, _ = per_element(case, "loop", args.repeat)
        default, verdicts = specgrad_case(case, None, args.repeat)
        fast, fast_verdicts = specgrad_case(case, "fast", max(args.repeat, QUICK_REPEAT))
        tf = torch_out.get(case.name, {})
        gc_full, gc_fast = tf.get("full", "n/a"), tf.get("fast")
        ratio_fast = f"{fast / gc_fast:.2f}" if isinstance(gc_fast, float) else "-"
        print(
            f"| {case.name} | {case.elements:,} | {fmt(floor, scaled)} | {fmt(seed, scaled)} | "
            f"{fmt(loop, scaled)} | {loop / floor:.2f} | {fmt(default)} | {default / seed:.2g} | "
            f"{fmt(fast)} | {fmt(gc_full)} | {fmt(gc_fast)} | {ratio_fast} | "
            f"{verdicts}; fast {fast_verdicts} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
