#!/usr/bin/env bash
# Runs every benchmark in full, one after another, and writes what each prints (its Markdown
# tables and the machine) to runs/benchmarks/<script>.md, its log to <script>.log, ready to
# paste into benchmarks/RESULTS.md. Run it on an otherwise idle machine: every figure is a
# ratio of timings taken side by side, but other jobs on the same cores still skew them.
#   bash benchmarks/run_all.sh            # in full: about 8 minutes on 2 cores
#   bash benchmarks/run_all.sh --smoke    # each script's smoke mode: about 2.5 minutes
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/benchmarks
mkdir -p "$out"
smoke=""
[[ "${1:-}" == "--smoke" ]] && smoke="--smoke"
echo "Load average before the runs: $(uptime | sed 's/.*load average: //')" | tee "$out/load.txt"

run() {
  local script=$1 name=${1%.py}
  shift
  echo "== benchmarks/$script $smoke $*"
  local start=$SECONDS
  .venv/bin/python "benchmarks/$script" $smoke "$@" 2>"$out/$name.log" | tee "$out/$name.md"
  echo "   ($((SECONDS - start)) s; tables in $out/$name.md)"
}

run supernet_step.py --steps 10 --rounds 5
run train_throughput.py
run inference_latency.py
run hardware_peak.py
