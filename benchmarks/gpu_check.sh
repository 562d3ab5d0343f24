#!/usr/bin/env bash
# The accelerator check: quick tests, the latency benchmark, the XLA-flops table and the conv paths, on whatever
# accelerator jax sees, from this checkout (PYTHONPATH=., nothing installed or downloaded), in about 6 minutes.
# Writes the gpu_check section of docs/benchmarks.md (see benchmarks/gpu_check.py for the phases).
#
#   benchmarks/gpu_check.sh            on a GPU/TPU machine (exit 2 where jax sees only the CPU)
#   benchmarks/gpu_check.sh --smoke    toy sizes on CPU: checks the script, writes the "no accelerator" line
#   benchmarks/gpu_check.sh --out FILE write the section into FILE instead
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
exec "$PY" benchmarks/gpu_check.py "$@"
