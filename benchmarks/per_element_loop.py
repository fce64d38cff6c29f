"""Side by side, in one run: the seed recipe's numerical gradient (a copy of the tensor per
element, L = sum(f * g) in the check's dtype) against specgrad's in-place loop (float64
differences, steps actually taken, noise estimate) in the same dtype, and, for float32, the
float64 oracle specgrad uses by default. Prints seconds, the ratio to the seed recipe, and
how far each estimate is from the float64 analytical gradient.

    python benchmarks/per_element_loop.py [--repeat 3]

Figures are medians; the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specgrad.numerics.finite_diff import central_difference
from specgrad.numerics.tolerance import UNIT_ROUNDOFF
from specgrad.zoo import activations, conv, linear, norm


def seed_recipe(f: Callable[[Any], Any], x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """The seed document's numerical_gradient, with L = sum(f(x) * g)."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        x_plus = x.copy()
        x_plus.flat[i] += eps
        x_minus = x.copy()
        x_minus.flat[i] -= eps
        grad.flat[i] = (np.sum(f(x_plus) * g) - np.sum(f(x_minus) * g)) / (2 * eps)
    return grad


def cases(dtype: str) -> list[tuple[str, Callable[[Any], Any], Callable[[Any, Any], Any], tuple[int, ...]]]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 3)).astype(dtype)
    b = rng.normal(size=8).astype(dtype)
    lw = rng.normal(size=(64, 256)).astype(dtype)
    lb = rng.normal(size=64).astype(dtype)
    gamma, beta = np.ones(64, dtype), np.zeros(64, dtype)
    return [
        (
            "conv2d x [1,3,16,16]",
            lambda x: conv.forward(x, w, b, 1, 1),
            lambda g, x: conv.backward(g, x, w, b, 1, 1)[0],
            (1, 3, 16, 16),
        ),
        (
            "linear x [4,256]",
            lambda x: linear.forward(x, lw, lb),
            lambda g, x: linear.backward(g, x, lw, lb)[0],
            (4, 256),
        ),
        ("tanh x [32,64]", activations.tanh_forward, lambda g, x: activations.tanh_backward(g, x), (32, 64)),
        (
            "layernorm x [16,64]",
            lambda x: norm.layernorm_forward(x, gamma, beta),
            lambda g, x: norm.layernorm_backward(g, x, gamma, beta)[0],
            (16, 64),
        ),
    ]


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'layer':24} {'dtype':8} {'seed s':>8} {'specgrad s':>10} {'ratio':>6} "
        f"{'seed max err':>13} {'specgrad max err':>16} {'oracle s':>9} {'oracle max err':>15}"
    )
    for dtype, eps in (("float32", 1e-3), ("float64", 1e-6)):
        for name, f, backward, shape in cases(dtype):
            rng = np.random.default_rng(1)
            x = rng.normal(size=shape).astype(dtype)
            g = rng.normal(size=f(x).shape).astype(dtype)
            exact = backward(g.astype(np.float64), x.astype(np.float64))
            t_seed, n_seed = timed(lambda: seed_recipe(f, x, g, eps), args.repeat)
            t_ours, n_ours = timed(
                lambda: (
                    central_difference(
                        lambda: (f(x),), x, [g.astype(np.float64)], eps, UNIT_ROUNDOFF[dtype], np
                    ).value
                ),
                args.repeat,
            )
            err_seed = float(np.max(np.abs(n_seed.astype(np.float64) - exact)))
            err_ours = float(np.max(np.abs(n_ours - exact)))
            oracle = ""
            if dtype != "float64":  # the same values in float64, float64 step: what specgrad runs
                x64, g64 = x.astype(np.float64), g.astype(np.float64)
                forward64 = next(c[1] for c in cases("float64") if c[0] == name)
                t_or, n_or = timed(
                    lambda: (
                        central_difference(
                            lambda: (forward64(x64),), x64, [g64], 1e-6, UNIT_ROUNDOFF["float64"], np
                        ).value
                    ),
                    args.repeat,
                )
                exact64 = next(c[2] for c in cases("float64") if c[0] == name)(g64, x64)
                oracle = f" {t_or:9.3f} {float(np.max(np.abs(n_or - exact64))):15.2e}"
            print(
                f"{name:24} {dtype:8} {t_seed:8.3f} {t_ours:10.3f} {t_ours / t_seed:6.2f} "
                f"{err_seed:13.2e} {err_ours:16.2e}{oracle}"
            )


if __name__ == "__main__":
    main()
