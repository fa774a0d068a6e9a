#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md on one GPU: bench_gpu.py (encode pass of the SD VAE
# architecture, training steps, the default quad run), stopped if it runs past 8 minutes.
# Extra arguments go to bench_gpu.py (--out DIR, --repeats N); --smoke runs it on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout 480 python benchmarks/bench_gpu.py "$@"
