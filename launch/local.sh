#!/usr/bin/env bash
# Starts NUM_PROCESSES processes of `python -m alexnet_jax.main` on this machine, joined into one
# run through a coordinator on 127.0.0.1, each simulating DEVICES_PER_PROCESS CPU devices (CPU
# collectives over gloo). What the multi-process tests use; the same program a pod runs.
#
#   bash launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS [main's flags...]
#   bash launch/local.sh 2 2 --config=configs/tiny.py --config.parallelism=towers_data \
#       --workdir=/tmp/alexnet_local
#
# Process 0 writes to this script's stdout/stderr; process i > 0 appends to WORKDIR/logs/process_i.log
# (LOG_DIR overrides). Exits 0 when every process does. When one fails, the others get GRACE_S
# seconds (default 60) to notice and stop with their own message, then are killed; every failure
# is reported, and the exit code is the first one seen. PYTHON (default python3) and PORT
# (default: a free one) can be set.
set -uo pipefail

if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ && $2 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS [main's flags...]" >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 2
PYTHON=${PYTHON:-python3}
GRACE_S=${GRACE_S:-60}
cd "$(dirname "$0")/.."

workdir=""
for arg in "$@"; do
  case $arg in --workdir=*) workdir=${arg#--workdir=} ;; esac
done
LOG_DIR=${LOG_DIR:-${workdir:-.}/logs}
mkdir -p "$LOG_DIR"
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

declare -A rank_of
pids=()
for ((i = 0; i < num_processes; i++)); do
  cmd=("$PYTHON" -m alexnet_jax.main --coordinator_address="127.0.0.1:$PORT"
       --num_processes="$num_processes" --process_id="$i" --cpu_devices="$devices" "$@")
  if [ "$i" -eq 0 ]; then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >> "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
  rank_of[$!]=$i
done

stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null
  sleep 2
  kill -KILL "${pids[@]}" 2>/dev/null
}
trap 'stop_all; exit 130' INT TERM

status=0
alive=("${pids[@]}")
deadline=""
while [ "${#alive[@]}" -gt 0 ]; do
  still=()
  for pid in "${alive[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    wait "$pid"
    rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "local.sh: process ${rank_of[$pid]} exited with status $rc;" \
           "logs of processes > 0 are in $LOG_DIR" >&2
      if [ "$status" -eq 0 ]; then
        status=$rc
        deadline=$((SECONDS + GRACE_S))
      fi
    fi
  done
  alive=("${still[@]}")
  if [ -n "$deadline" ] && [ "${#alive[@]}" -gt 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
    echo "local.sh: the other processes did not stop within ${GRACE_S} s; killing them" >&2
    stop_all
    wait
    break
  fi
  [ "${#alive[@]}" -gt 0 ] && sleep 0.5
done
exit "$status"
