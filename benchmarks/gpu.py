"""CPU vs GPU, the same checks side by side: what a full default check of one case costs
on each device, and the ratio, per layer and size.

    python benchmarks/gpu.py [--device gpu] [--repeat 1] [--quick] [--json FILE]

Each row is one spec case (dtype float64 unless the row says float32, whose float64
oracle then runs on the device too), checked in specgrad's default mode (contracts,
precision probes, structure detection, every element's difference, colored where the
structure allows, the cross-checks and the Taylor test): `run_spec` in this process,
BLAS on one thread (as every specgrad worker runs), medians of --repeat runs. The device
is warmed up first with a --mode fast run of the same case (cupy compiles its kernels on
first use); the CPU needs none. `ratio` = CPU seconds / device seconds. `transfers`
(device sim only) counts device-to-host reads: what a real GPU waits on.

--device sim runs the same on the simulated device (numpy under cupy's rules): a dry run
of this script on a machine without a GPU, not a timing of anything.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specgrad.backends import backend  # noqa: E402
from specgrad.compile import compile_spec  # noqa: E402
from specgrad.process import one_blas_thread, tune_allocator  # noqa: E402
from specgrad.runner import Engines, run_spec  # noqa: E402
from specgrad.validate import parse_spec  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    forward: str
    backward: str
    inputs: dict[str, list[int]]
    params: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float64"
    quick: bool = True  # part of --quick

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "specgrad": 1,
            "name": "bench",
            "description": self.name,
            "forward": self.forward,
            "backward": self.backward,
            "inputs": {n: {"shape": s} for n, s in self.inputs.items()},
            "attrs": self.attrs,
            "dtypes": [self.dtype],
            "cases": ["random"],
        }
        if self.params:
            doc["parameters"] = self.params
        return doc


def _conv(x: list[int], out: int, dtype: str = "float64", quick: bool = True) -> Case:
    return Case(
        f"conv2d 3x3 pad 1, {x} -> {out} ch{'' if dtype == 'float64' else ', ' + dtype}",
        "specgrad.zoo.conv:forward",
        "specgrad.zoo.conv:backward",
        {"x": x},
        {"w": {"shape": [out, x[1], 3, 3]}, "b": {"shape": [out]}},
        {"stride": 1, "padding": 1},
        dtype,
        quick,
    )


def _tanh(x: list[int], quick: bool = True) -> Case:
    return Case(
        f"tanh {x}",
        "specgrad.zoo.activations:tanh_forward",
        "specgrad.zoo.activations:tanh_backward",
        {"x": x},
        quick=quick,
    )


def _linear(batch: int, n: int, quick: bool = True) -> Case:
    return Case(
        f"linear [{batch},{n}] x [{n},{n}]",
        "specgrad.zoo.linear:forward",
        "specgrad.zoo.linear:backward",
        {"x": [batch, n]},
        {"w": {"shape": [n, n]}, "b": {"shape": [n]}},
        quick=quick,
    )


CASES = [
    _conv([1, 3, 64, 64], 8),
    _conv([8, 16, 32, 32], 16),
    _conv([8, 16, 32, 32], 16, "float32"),
    _conv([8, 32, 32, 32], 32, quick=False),
    _tanh([256, 1024]),
    _tanh([1024, 1024], quick=False),
    _linear(32, 256),
    _linear(128, 512, quick=False),
    Case(
        "layernorm [64,1024]",
        "specgrad.zoo.norm:layernorm_forward",
        "specgrad.zoo.norm:layernorm_backward",
        {"x": [64, 1024]},
        {
            "gamma": {"shape": [1024], "fill": {"kind": "uniform", "low": 0.5, "high": 1.5}},
            "beta": {"shape": [1024]},
        },
    ),
    Case(
        "softmax [128,1000]",
        "specgrad.zoo.softmax:softmax_forward",
        "specgrad.zoo.softmax:softmax_backward",
        {"x": [128, 1000]},
    ),
]


def timed(spec: Any, device: str, repeat: int, engines: Engines) -> tuple[float, list[str]]:
    """Median seconds of the full default check on `device`, and its statuses."""
    plans = compile_spec(spec, devices=[device])
    seconds, statuses = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        statuses = [r.status.value for r in run_spec(spec, plans, engines)]
        backend(device).synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) if seconds else 0.0, statuses


def measure(case: Case, device: str, repeat: int) -> dict[str, Any]:
    from specgrad import simulated

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(case.document(), sort_keys=False))
        spec = parse_spec(path)
        engines = Engines()
        cpu, cpu_status = timed(spec, "cpu", repeat, engines)
        list(run_spec(spec, compile_spec(spec, devices=[device], mode="fast"), engines))  # warm-up
        simulated.TRANSFERS.clear()
        there, there_status = timed(spec, device, repeat, engines)
        transfers = simulated.TRANSFERS["to_host"] // max(repeat, 1)
    elements = sum(_size(s) for s in case.inputs.values()) + sum(
        _size(p["shape"]) for p in case.params.values()
    )
    return {
        "layer": case.name,
        "elements": elements,
        "checks": len(cpu_status),
        "cpu_s": cpu,
        "device_s": there,
        "ratio": cpu / there if there else float("nan"),
        "cpu_status": _summary(cpu_status),
        "device_status": _summary(there_status),
        "transfers": transfers if device == "sim" else None,
    }


def _size(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _summary(statuses: list[str]) -> str:
    bad = sorted({s for s in statuses if s not in ("PASS", "SKIP")})
    return "all PASS" if not bad else ", ".join(f"{statuses.count(s)} {s}" for s in bad)


def describe(device: str) -> str:
    text = backend(device).describe()
    return text + ("; not a timing of any GPU" if device == "sim" else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="gpu", help="the device to compare with the CPU (gpu, sim)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="leave out the largest sizes")
    parser.add_argument("--only", help="cases whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    tune_allocator()
    backend(args.device)  # a clear error before anything runs
    print(f"device: {describe(args.device)}; CPU: numpy, BLAS on one thread", flush=True)
    rows = []
    with one_blas_thread():
        for case in CASES:
            if (args.quick and not case.quick) or (args.only and args.only not in case.name):
                continue
            row = measure(case, args.device, args.repeat)
            rows.append(row)
            print(
                f"  {row['layer']}: cpu {row['cpu_s']:.2f} s, {args.device} {row['device_s']:.2f} s, "
                f"ratio {row['ratio']:.2f} ({row['device_status']})",
                flush=True,
            )
            if args.json:  # after every row: a run stopped at its time limit keeps what it measured
                args.json.write_text(json.dumps({"device": describe(args.device), "rows": rows}, indent=1))
    print()
    print(
        f"| layer | elements | checks | CPU s | {args.device} s | CPU / {args.device} "
        f"| verdicts (CPU / {args.device}) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        verdicts = (
            r["cpu_status"]
            if r["cpu_status"] == r["device_status"]
            else f"{r['cpu_status']} / {r['device_status']}"
        )
        print(
            f"| {r['layer']} | {r['elements']:,} | {r['checks']} | {r['cpu_s']:.2f} | {r['device_s']:.2f} | "
            f"{r['ratio']:.2f} | {verdicts} |"
        )


if __name__ == "__main__":
    main()
