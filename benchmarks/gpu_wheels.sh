#!/usr/bin/env bash
# Download, into .whl/, the wheels benchmarks/gpu_check.sh needs on a GPU machine that has
# cupy, numpy, pyyaml, pytest, hypothesis, rich and threadpoolctl but no network (CPython
# 3.12, x86-64 Linux; PYTHON_VERSION=3.11 etc. for another). Run it where pip can reach PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON_VERSION:-3.12}
mkdir -p .whl
for wheel in "jsonschema==4.25.1" "jsonschema-specifications==2025.9.1" "referencing==0.37.0" \
             "rpds-py==0.30.0" "attrs==25.4.0" "typing-extensions==4.15.0"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$wheel"
done
ls .whl
