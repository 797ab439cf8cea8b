#!/usr/bin/env bash
# Cold selection time on the demo pool, each run with its own empty stage cache, one after the other; then the
# dry-run estimate of the default. Run it on an otherwise idle machine. Arguments name the runs (default: paper
# by-influence default):
#   default       today's defaults (verification landmarks, half of them nearest the target samples)
#   by-influence  verification by propagated influence alone (--verify-neighbours 0, the default before 2026-11-28)
#   paper         the paper's method (--verify 0)
#   rds+          the RDS+ baseline (--method rds+)
#   before        the default of another checkout of this repository, BEFORE_SRC=<its src folder> (e.g. a
#                 `git worktree` of an older commit), to time a change side by side with the code before it
# Results in runs/coldtime/<run>.{time,log} (wall s, peak KiB) and runs/coldtime/dry.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "from pathlib import Path; from influence_distillation.evaluation.demo import prepare_demo_data; \
prepare_demo_data(Path('runs/coldtime'), False, 0)"  # the demo's pool (ShareGPT, maths, code)
B=.venv/bin/influence-distill
D=runs/coldtime/data
COMMON="--pool $D/pool.jsonl --target $D/targets/humaneval/target.jsonl --model smollm2-135m --budget 120
        --landmarks 120 --num-blocks 2 --max-length 384 --quiet --overwrite"
runs=("$@"); [ ${#runs[@]} -gt 0 ] || runs=(paper by-influence default)
for run in "${runs[@]}"; do
  extra=""; path="${PYTHONPATH:-}"
  case $run in
    paper) extra="--verify 0" ;;
    by-influence) extra="--verify-neighbours 0" ;;
    rds+) extra="--method rds+" ;;
    before) path="${BEFORE_SRC:?before needs BEFORE_SRC=<src folder of the older checkout>}" ;;
    default) ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  rm -rf "runs/coldtime/$run" "runs/coldtime/$run-stages"
  PYTHONPATH="$path" /usr/bin/time -f "%e %M" -o "runs/coldtime/$run.time" $B select $COMMON $extra \
      --out "runs/coldtime/$run" --cache-dir "runs/coldtime/$run-stages" > "runs/coldtime/$run.log" 2>&1
done
$B select $COMMON --out runs/coldtime/dry --dry-run > runs/coldtime/dry.txt 2>&1
