#!/usr/bin/env bash
# The scratch_flash measurements of issue 15, one after the other, on the 2-core CPU.
# As run at that time; the benchmark command is python -m attention_lab.cli.bench since the
# package gained its cli/ floor (the same options).
set -u
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"  # the repository root
# One thread: this 2-core machine is shared with other jobs, and with two threads every small
# operation waits at a barrier for a descheduled thread, which hides the kernels behind the load.
export OMP_NUM_THREADS=1
. .venv/bin/activate
OUT=outputs/results/bench/2026-11-26-cpu
mkdir -p $OUT
{
  echo "machine: $(lscpu | grep 'Model name' | sed 's/ *Model name: *//'), $(nproc) cores, no GPU"
  echo "torch: $(python -c 'import torch; print(torch.__version__, "threads", torch.get_num_threads())')"
  echo "git: $(git rev-parse HEAD)"
  echo "load before: $(cat /proc/loadavg)"
} > $OUT/machine.txt
run() { echo "\$ $*" >> $OUT/commands.txt; echo "load: $(cat /proc/loadavg)" >> $OUT/commands.txt; /usr/bin/time -f "%e s wall" "$@" >> $OUT/log.txt 2>&1; }
run python -m attention_lab.bench attention --seq-lens 256 1024 4096 --batch 2 --masks none causal --repeats 2 --min-time 1 --out $OUT/attention
run python -m attention_lab.bench flash-blocks --seq-lens 1024 --batch 2 --block-sizes 64 128 256 512 --masks none causal --repeats 1 --min-time 0.5 --out $OUT/flash-blocks
run python -m attention_lab.bench train --experiments mnist_encoder vit_mnist multi30k_transformer --repeats 3 --min-time 2 --out $OUT/train
echo "load after: $(cat /proc/loadavg)" >> $OUT/machine.txt
echo done >> $OUT/log.txt
