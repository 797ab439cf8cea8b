#!/usr/bin/env bash
# Cold selection time on the demo pool: today's default (verification landmarks, half of them nearest the target
# samples) against verification by propagated influence alone (--verify-neighbours 0, the default before) and the
# paper's method (--verify 0), one after the other, each with its own empty stage cache; then the dry-run estimate
# of the default. Run it on an otherwise idle machine; results in runs/coldtime/{paper,by-influence,default}.{time,log}
# (wall s, peak KiB) and runs/coldtime/dry.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "from pathlib import Path; from influence_distillation.evaluation.demo import prepare_demo_data; \
prepare_demo_data(Path('runs/coldtime'), False, 0)"
B=.venv/bin/influence-distill
D=runs/coldtime/data
COMMON="--pool $D/pool.jsonl --target $D/targets/knowledge/target.jsonl --model smollm2-135m --budget 120
        --landmarks 120 --num-blocks 2 --max-length 320 --quiet --overwrite"
for run in paper by-influence default; do
  extra=""; [ $run = paper ] && extra="--verify 0"; [ $run = by-influence ] && extra="--verify-neighbours 0"
  rm -rf runs/coldtime/$run runs/coldtime/$run-stages
  /usr/bin/time -f "%e %M" -o runs/coldtime/$run.time $B select $COMMON $extra --out runs/coldtime/$run \
      --cache-dir runs/coldtime/$run-stages > runs/coldtime/$run.log 2>&1
done
$B select $COMMON --out runs/coldtime/dry --dry-run > runs/coldtime/dry.txt 2>&1
