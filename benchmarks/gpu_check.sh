#!/usr/bin/env bash
# One short run on a GPU machine (a few minutes): the GPU tests (tests/gpu: the zoo on cupy,
# CPU/GPU agreement, a wrong kernel caught, the issue's conv checked in full), then the CPU
# vs GPU benchmark (benchmarks/gpu.py), then a summary. Works from the source tree: no
# install, PYTHONPATH=. ; where jsonschema & co. are missing, the wheels in .whl/ are
# installed to a temp folder first (benchmarks/gpu_wheels.sh downloads them).
#
#   benchmarks/gpu_check.sh [OUTDIR]        # results: OUTDIR (default $OUT, else /tmp/specgrad-gpu)
#   DEVICE=sim benchmarks/gpu_check.sh      # the same on the simulated device: a dry run on a CPU
#   FULL=1 ...                              # the benchmark's larger sizes too
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/specgrad-gpu}}
device=${DEVICE:-gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if ! $py -c "import jsonschema, yaml, numpy, rich, threadpoolctl, pytest, hypothesis" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/specgrad-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/specgrad-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "dependencies missing and no wheels in .whl/ (run benchmarks/gpu_wheels.sh where pip works)"
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "== machine"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py - <<'PY'
import platform, numpy
try:
    import cupy
    version = cupy.__version__
except ImportError:
    version = "not installed"
print(f"python {platform.python_version()}, numpy {numpy.__version__}, cupy {version}")
PY
} 2>&1 | tee "$out/machine.txt"

# each stage is interrupted (SIGINT) at its limit: pytest still writes its report of the
# tests that finished, the benchmark has written its JSON after every row
echo "== GPU tests (device $device)"
SPECGRAD_GPU_TEST_DEVICE=$device timeout -s INT -k 30 330 $py -m pytest tests/gpu -m gpu -p no:cacheprovider -q -rA -s \
  --junitxml "$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}

echo "== benchmark: CPU vs $device"
quick=--quick
[ -n "${FULL:-}" ] && quick=
timeout -s INT -k 30 300 $py benchmarks/gpu.py --device "$device" $quick \
  --json "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.log"
bench=${PIPESTATUS[0]}

echo "== summary"
$py - "$out" "$tests" "$bench" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, tests, bench = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print((out / "machine.txt").read_text().strip())
try:
    suite = ET.parse(out / "gpu_tests.xml").getroot().find("testsuite")
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
    print(f"GPU tests: exit {tests}; {counts}")
    for case in suite.iter("testcase"):
        status = "FAILED" if case.find("failure") is not None or case.find("error") is not None else (
            "SKIPPED" if case.find("skipped") is not None else "passed")
        print(f"  {status:8} {case.get('name')} ({float(case.get('time', 0)):.1f} s)")
except (OSError, ET.ParseError, AttributeError) as exc:
    print(f"GPU tests: exit {tests}; no report ({exc})")
try:
    rows = json.loads((out / "gpu_bench.json").read_text())
    print(f"benchmark: exit {bench}; device {rows['device']}")
    for r in rows["rows"]:
        print(f"  {r['layer']}: cpu {r['cpu_s']:.2f} s, device {r['device_s']:.2f} s, "
              f"ratio {r['ratio']:.1f} ({r['device_status']})")
except (OSError, ValueError, KeyError) as exc:
    print(f"benchmark: exit {bench}; no figures ({exc})")
PY
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
