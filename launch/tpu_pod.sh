#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod slice: copies this checkout to every worker, installs the
# environment there, and starts `python -m alexnet_jax.main` on all workers at once
# (`--worker=all`). jax.distributed finds the coordinator, process count and ids by itself.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE [main's flags...]
#   bash launch/tpu_pod.sh my-v4-32 us-central2-b --config=configs/paper.py \
#       --config.parallelism=towers_data --workdir=gs://my-bucket/alexnet/run1 \
#       --config.data_dir=gs://my-bucket/tensorflow_datasets
#
# Every worker must see the same workdir and data dir: a gs:// bucket (read and written with the
# VM's service account; no mount needed) or a shared file system mounted at the same path on
# every worker (Filestore/NFS). orbax writes each host's part of a checkpoint there. A gs://
# workdir is not locked: start one run per directory (docs/gcs.md).
# Set PROJECT to pass --project.
# SETUP=0 skips copying and installing (later runs). Ctrl-C stops the local ssh sessions; to stop
# the workers themselves: gcloud compute tpus tpu-vm ssh TPU_NAME --worker=all \
#   --command='pkill -f alexnet_jax.main'
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash launch/tpu_pod.sh TPU_NAME ZONE [main's flags...]" >&2
  exit 2
fi
tpu=$1
zone=$2
shift 2
cd "$(dirname "$0")/.."
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone" ${PROJECT:+--project="$PROJECT"})
remote_dir=alexnet_jax_checkout

if [ "${SETUP:-1}" = 1 ]; then
  archive=$(mktemp --suffix=.tar.gz)
  git archive --format=tar.gz -o "$archive" HEAD  # the committed tree, the same on every worker
  "${gcloud_tpu[@]}" scp "$archive" "$tpu:/tmp/alexnet_jax.tar.gz" --worker=all "${where[@]}"
  rm -f "$archive"
  "${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" --command="
    set -e; rm -rf ~/$remote_dir; mkdir -p ~/$remote_dir; cd ~/$remote_dir
    tar xzf /tmp/alexnet_jax.tar.gz
    python3 -m venv .venv
    .venv/bin/pip install -q -r requirements.txt
    .venv/bin/pip install -q 'jax[tpu]==$(grep -oP '^jax==\K.*' requirements.txt)'"
fi

# Quote main's flags once for the remote shell.
flags=$(printf '%q ' "$@")
"${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" \
  --command="cd ~/$remote_dir && .venv/bin/python -m alexnet_jax.main $flags"
