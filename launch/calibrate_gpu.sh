#!/usr/bin/env bash
# The one command for a lent GPU machine: calibrate one device, then plan against it, all in
# under 8 minutes, everything worth keeping written to $OUT.
#
#   bash launch/calibrate_gpu.sh
#
# Stages, each under its own `timeout` so that the whole stays inside TOTAL_S (default 470 s):
#   1. ml_collections: the GPU image has JAX, flax and optax but not ml-collections, and no
#      network. If it is missing, the wheel carried in WHEELS (default .carry/wheels) is
#      installed (pip --no-index --no-deps, into a folder put on PYTHONPATH). Prepare the folder
#      once on the dev machine, in the repository's root (the wheel is pure Python; its needs,
#      absl-py and PyYAML, are in the image):
#          pip download ml-collections==1.1.0 --no-deps -d .carry/wheels
#          mkdir -p .git/info && echo /.carry/ >> .git/info/exclude
#      and name `.carry` in the device tool's `carry`:
#          run(command="bash launch/calibrate_gpu.sh", carry=[".carry"], timeout_s=540)
#   2. python -m alexnet_jax.calibrate --out=$OUT/calibration.json --collectives (budget
#      CALIBRATE_BUDGET_S, default 300 s: no run starts after it; the file is rewritten after
#      every run, so a kill at the stage's timeout keeps what was measured). Then the links:
#      all-reduce, all-gather and reduce-scatter over 2, 4, 8 ... of the machine's GPUs, 1 KiB to
#      1 GiB (capped by a quarter of a GPU's memory), warm-up 5, mean of 20, into the file's
#      `collectives` (budget COLLECTIVE_BUDGET_S, default 45 s: no new size starts after it). A
#      machine of one GPU has no group to measure: the file says so and has none. The trace goes to TRACE_DIR (default
#      /tmp/alexnet_calibrate_trace: the profiler nests it deeper than the device tool brings
#      back); its .xplane.pb and .trace.json.gz are copied to $OUT when under 16 MiB.
#   3. python -m alexnet_jax.plan --config=configs/paper.py --target=gpu-h200 --devices=1
#      --measure_steps=3 --calibration=$OUT/calibration.json --out=$OUT/plan, with the time
#      left. A plan that fails (or a missing alexnet_jax/plan.py) is reported, not fatal.
#   4. A summary: the calibration's table and the plan's.
# Exit status: 0 when the calibration file holds at least one measured run, else 1.
#
# Environment: OUT (default /tmp/alexnet_calibrate), PYTHON (default python3), TOTAL_S,
# CALIBRATE_BUDGET_S, COLLECTIVE_BUDGET_S, TRACE_DIR, WHEELS; CALIBRATE_ARGS and PLAN_ARGS are
# appended to the two commands' flags (the later flag wins), e.g. the tests' CPU smoke run:
#   CALIBRATE_ARGS="--configs=configs/tiny.py --dtypes=float32 --batch_sizes=4 --steps=1
#                   --collective_max_bytes=4096 --collective_iters=2"
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/alexnet_calibrate}
PYTHON=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-470}
CALIBRATE_BUDGET_S=${CALIBRATE_BUDGET_S:-300}
COLLECTIVE_BUDGET_S=${COLLECTIVE_BUDGET_S:-45}
TRACE_DIR=${TRACE_DIR:-/tmp/alexnet_calibrate_trace}
WHEELS=${WHEELS:-.carry/wheels}
CALIBRATE_ARGS=${CALIBRATE_ARGS:-}
PLAN_ARGS=${PLAN_ARGS:-}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
start=$SECONDS

say() { echo "calibrate_gpu.sh: $*" | tee -a "$LOG"; }
left() { echo $((TOTAL_S - (SECONDS - start))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# --- 1. ml_collections ---
if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  wheel=$(ls "$WHEELS"/ml_collections-*.whl 2>/dev/null | head -n 1)
  if [ -z "$wheel" ]; then
    say "ml_collections is not installed and no wheel is in $WHEELS (see this script's header)"
  else
    site=/tmp/alexnet_site
    if timeout 60 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
         --target "$site" "$wheel" >> "$LOG" 2>&1; then
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
      say "installed $wheel"
    else
      say "pip could not install $wheel (see $LOG)"
    fi
  fi
fi

# --- 2. calibrate ---
calibration="$OUT/calibration.json"
rm -f "$calibration"
rm -rf "$TRACE_DIR"
# The stage's limit: both budgets plus time for the run in flight, leaving the plan a minute.
limit=$(min $((CALIBRATE_BUDGET_S + COLLECTIVE_BUDGET_S + 90)) $(($(left) - 60)))
if [ "$limit" -lt 10 ]; then limit=10; fi
say "calibrating (budget ${CALIBRATE_BUDGET_S} s, collectives ${COLLECTIVE_BUDGET_S} s, stage limit ${limit} s)"
# shellcheck disable=SC2086  # CALIBRATE_ARGS is a list of flags
timeout --kill-after=10 "$limit" "$PYTHON" -m alexnet_jax.calibrate --out="$calibration" \
  --trace_dir="$TRACE_DIR" --budget_s="$CALIBRATE_BUDGET_S" --collectives \
  --collective_budget_s="$COLLECTIVE_BUDGET_S" $CALIBRATE_ARGS 2>&1 \
  | tee -a "$LOG" | grep -v -E '^[IW][0-9]{4} '
calibrate_rc=${PIPESTATUS[0]}
[ "$calibrate_rc" -eq 124 ] && say "the calibration was stopped at its ${limit} s limit"
[ "$calibrate_rc" -ne 0 ] && say "calibrate exited with status $calibrate_rc"

for pattern in '*.xplane.pb:trace.xplane.pb' '*.trace.json.gz:trace.json.gz'; do
  found=$(find "$TRACE_DIR" -name "${pattern%%:*}" -size -16M 2>/dev/null | head -n 1)
  if [ -n "$found" ]; then
    cp "$found" "$OUT/${pattern##*:}" && say "trace file $found copied to $OUT/${pattern##*:}"
  fi
done

# --- 3. plan ---
if [ ! -f alexnet_jax/plan.py ]; then
  say "no alexnet_jax/plan.py in this tree: the plan step is skipped"
  plan_rc=skipped
else
  with_calibration=()
  if [ -f "$calibration" ]; then
    with_calibration=(--calibration="$calibration")
  else
    say "no calibration file: planning at the assumed efficiency"
  fi
  limit=$(($(left) - 15))
  if [ "$limit" -lt 10 ]; then
    say "no time left for the plan"
    plan_rc=skipped
  else
    say "planning (limit ${limit} s)"
    # shellcheck disable=SC2086  # PLAN_ARGS is a list of flags
    timeout --kill-after=10 "$limit" "$PYTHON" -m alexnet_jax.plan --config=configs/paper.py \
      --target=gpu-h200 --devices=1 --measure_steps=3 "${with_calibration[@]}" \
      --out="$OUT/plan" $PLAN_ARGS 2>&1 | tee -a "$LOG" | grep -v -E '^[IW][0-9]{4} '
    plan_rc=${PIPESTATUS[0]}
    [ "$plan_rc" -ne 0 ] && say "the plan failed (status $plan_rc); the calibration stands"
  fi
fi

# --- 4. summary ---
echo
say "summary after $((SECONDS - start)) s (calibrate: status $calibrate_rc; plan: $plan_rc)"
measured=0
if [ -f "$calibration" ]; then
  summary=$(timeout 60 "$PYTHON" - "$calibration" 2>>"$LOG" <<'PY'
import sys
from alexnet_jax.perf import calibrate
from alexnet_jax.pods import calibration
try:
  result = calibration.load_calibration(sys.argv[1])
except calibration.CalibrationError as e:
  print(f'the calibration file is not usable: {e}')
  sys.exit()
print(calibrate.markdown(result))
print(f'{"complete" if result.get("complete") else "INCOMPLETE (stopped early)"}: '
      f'{result["device_kind"]}, jax {result["jax_version"]}, target {result["target"]}')
print(f'collectives measured: {sum(len(e["sizes"]) for e in result.get("collectives", []))} '
      f'sizes over {len(result.get("collectives", []))} kinds x groups')
print(f'MEASURED={sum(r.get("status") == "ok" for r in result["runs"])}')
PY
  )
  echo "$summary" | grep -v '^MEASURED=' | tee -a "$LOG"
  measured=$(echo "$summary" | sed -n 's/^MEASURED=//p')
  measured=${measured:-0}
else
  say "no calibration file was written"
fi
if [ -f "$OUT/plan/plan.md" ]; then
  echo "--- $OUT/plan/plan.md ---"
  head -n 30 "$OUT/plan/plan.md"
fi
say "measured runs: $measured; files in $OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
[ "$measured" -gt 0 ] 2>/dev/null && exit 0
exit 1
