"""Power of each gradient checker on the mutant corpus, side by side, in one run: how many
of the corpus's wrong backwards it catches (recall) and how often it flags the correct zoo
(false alarms), on identical inputs.

    python benchmarks/power.py            # needs torch for the gradcheck rows (CPU build)

Methods, each given the same seeded inputs (specgrad's random and special cases; specgrad
itself also runs its wide case, which is part of its defaults):
- specgrad defaults, float32 checks and float64 checks;
- the seed's recipe: float32, central differences with eps 1e-5 on a copy per element,
  np.allclose(analytical, numerical, rtol=1e-2, atol=1e-5);
- torch.autograd.gradcheck (float64, its defaults eps 1e-6, atol 1e-5, rtol 1e-3), full
  Jacobian and fast_mode, on the same numpy code wrapped in a torch.autograd.Function.

A subject (mutant or correct zoo spec) counts as flagged by a method when any of its
checks fails or errors in any case. Prints a markdown table and the seconds each took.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specgrad.bindings import grads_by_name, make_evaluator, raw_outputs_of  # noqa: E402
from specgrad.cli import main as specgrad_main  # noqa: E402
from specgrad.model import Spec  # noqa: E402
from specgrad.numerics.inputs import make_inputs, make_upstream  # noqa: E402
from specgrad.validate import parse_spec  # noqa: E402
from tests.e2e.test_mutants import BUGGY, MUTANTS, _mutant_spec  # noqa: E402

CASES = ("random", "special")
Subject = tuple[str, Path]  # (name, spec file)


def subjects(folder: Path) -> tuple[list[Subject], list[Subject]]:
    """(mutants, correct zoo specs) written into `folder`, names unique."""
    mutants_dir, zoo_dir = folder / "mutants", folder / "zoo"
    mutants_dir.mkdir()
    zoo_dir.mkdir()
    shutil.copy(BUGGY, mutants_dir / "buggy_layers.py")
    for mutant, (spec, edits, _, _) in MUTANTS.items():
        _mutant_spec(mutants_dir, mutant, spec, edits)
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        shutil.copy(path, zoo_dir / path.name)
    mutants = [(p.stem, p) for p in sorted(mutants_dir.glob("*.yaml"))]
    zoo = [(p.stem, p) for p in sorted(zoo_dir.glob("*.yaml"))]
    return mutants, zoo


# --- specgrad -----------------------------------------------------------------------------


def specgrad_flags(folder: Path, dtype: str) -> set[str]:
    report = folder / f"report_{dtype}.json"
    specgrad_main(["validate", str(folder), "--dtype", dtype, "--json", str(report), "-q"])
    doc = json.loads(report.read_text())
    return {c["spec"].split(".")[0] for c in doc["checks"] if c["status"] in ("FAIL", "ERROR")}


# --- the other methods, driven through specgrad's bindings on specgrad's inputs ----------


def _case_inputs(spec: Spec, case_name: str, dtype: str) -> dict[str, np.ndarray]:
    case = next(c for c in spec.cases if c.name == case_name)
    return make_inputs(spec, case, dtype, spec.seed)


def _loss_and_grads(
    spec: Spec, dtype: str, case: str
) -> tuple[Callable[[dict[str, Any]], float], dict[str, Any], dict[str, Any]]:
    """L(tensors) = sum <f, g> in `dtype`, the tensors, and backward's gradients there."""
    evaluator = make_evaluator(spec)
    tensors = _case_inputs(spec, case, dtype)
    raw, state = evaluator.forward({n: a.copy() for n, a in tensors.items()})
    outputs, was_tuple = raw_outputs_of(raw)
    shapes = {i: o.shape for i, o in enumerate(outputs) if str(o.dtype).startswith("float")}
    up = make_upstream(shapes, dtype, spec.seed)
    g = [up.get(i) for i in range(len(outputs))]
    grads = grads_by_name(evaluator.backward(state, tuple(g) if was_tuple else g[0]), spec)

    def loss(point: dict[str, Any]) -> float:
        outs = raw_outputs_of(evaluator.forward(point)[0])[0]
        return sum(np.sum(o * gi) for o, gi in zip(outs, g, strict=True) if gi is not None)

    return loss, tensors, grads


def seed_recipe_flags(path: Path) -> bool:
    spec = parse_spec(path)
    for case in CASES:
        loss, tensors, grads = _loss_and_grads(spec, "float32", case)
        for name, analytical in grads.items():
            x = tensors[name]
            numerical = np.zeros_like(x)
            for i in range(x.size):
                plus, minus = dict(tensors), dict(tensors)
                plus[name], minus[name] = x.copy(), x.copy()
                plus[name].flat[i] += 1e-5
                minus[name].flat[i] -= 1e-5
                numerical.flat[i] = (loss(plus) - loss(minus)) / (2 * 1e-5)
            if not np.allclose(analytical, numerical, rtol=1e-2, atol=1e-5):
                return True
    return False


def gradcheck_flags(path: Path, fast_mode: bool) -> bool:
    import torch

    spec = parse_spec(path)
    evaluator = make_evaluator(spec)
    names = [t.name for t in spec.tensors]
    differentiable = [t.name for t in spec.tensors if t.grad]

    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *ts: Any) -> Any:
            ctx.arrays = {n: t.detach().numpy().copy() for n, t in zip(names, ts, strict=True)}
            raw, _ = evaluator.forward({n: a.copy() for n, a in ctx.arrays.items()})
            return torch.from_numpy(np.array(raw_outputs_of(raw)[0][0]))

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            # gradcheck calls backward once per Jacobian row on one forward: a fresh forward
            # each time, for layers whose backward consumes its cache
            _, state = evaluator.forward({n: a.copy() for n, a in ctx.arrays.items()})
            grads = grads_by_name(evaluator.backward(state, g.detach().numpy().copy()), spec)
            return tuple(torch.from_numpy(np.array(grads[n])) if n in grads else None for n in names)

    for case in CASES:
        tensors = _case_inputs(spec, case, "float64")
        inputs = tuple(torch.from_numpy(tensors[n].copy()).requires_grad_(n in differentiable) for n in names)
        try:
            ok = torch.autograd.gradcheck(
                Wrapped.apply, inputs, fast_mode=fast_mode, raise_exception=False, nondet_tol=0.0
            )
        except Exception:  # noqa: BLE001 - gradcheck raising is a flag too
            ok = False
        if not ok:
            return True
    return False


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    rows: list[tuple[str, set[str], set[str], float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mutants, zoo = subjects(folder)
        sys.path.insert(0, str(folder / "mutants"))
        for dtype in ("float32", "float64"):
            start = time.perf_counter()
            caught = specgrad_flags(folder / "mutants", dtype)
            alarms = specgrad_flags(folder / "zoo", dtype)
            rows.append((f"specgrad defaults ({dtype})", caught, alarms, time.perf_counter() - start))
        methods: list[tuple[str, Callable[[Path], bool]]] = [
            ("seed recipe (float32, eps 1e-5, rtol 1e-2, atol 1e-5)", seed_recipe_flags)
        ]
        try:
            import torch  # noqa: F401

            methods += [
                ("torch gradcheck (float64)", lambda p: gradcheck_flags(p, False)),
                ("torch gradcheck fast_mode (float64)", lambda p: gradcheck_flags(p, True)),
            ]
        except ImportError:
            print("torch is not installed: the gradcheck rows are left out (pip install torch==2.13.0)")
        for label, flagged in methods:
            start = time.perf_counter()
            caught = {n for n, p in mutants if _safe(flagged, p)}
            alarms = {n for n, p in zoo if _safe(flagged, p)}
            rows.append((label, caught, alarms, time.perf_counter() - start))
    print(f"\n{len(mutants)} mutants, {len(zoo)} correct zoo specs; cases: {', '.join(CASES)}\n")
    print("| method | mutants caught | recall | false alarms on the correct zoo | seconds |")
    print("|---|---|---|---|---|")
    for label, caught, alarms, seconds in rows:
        which = f" ({', '.join(sorted(alarms))})" if alarms else ""
        print(
            f"| {label} | {len(caught)}/{len(mutants)} | {len(caught) / len(mutants):.0%} | "
            f"{len(alarms)}/{len(zoo)}{which} | {seconds:.1f} |"
        )
    missed: dict[str, list[str]] = defaultdict(list)
    for label, caught, _, _ in rows:
        for n, _ in mutants:
            if n not in caught:
                missed[label].append(n)
    print()
    for label, names in missed.items():
        print(f"missed by {label}: {', '.join(names)}")


def _safe(flagged: Callable[[Path], bool], path: Path) -> bool:
    """A method that crashes on a subject has flagged it (it did not pass it)."""
    try:
        return flagged(path)
    except Exception:  # noqa: BLE001
        return True


if __name__ == "__main__":
    main()
