#!/usr/bin/env bash
# Training throughput at all-MiniLM-L6-v2's size (experiment=sst2_minilm's model: 6 layers,
# width 384, 12 heads, the course's head, fully fine-tuned), every attention kind that runs on
# the CPU against torch's, interleaved in one process; one thread, beside two trainings.
set -u
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"  # the repository root
OUT=outputs/results/bench/2026-12-02-cpu-minilm
export OMP_NUM_THREADS=1
{
  echo "machine: $(lscpu | grep 'Model name' | sed 's/ *Model name: *//'), $(nproc --all) cores (one thread used), no GPU"
  echo "git: $(git rev-parse HEAD)"
  echo "load before: $(cat /proc/loadavg)"
} > $OUT/machine.txt
python -m attention_lab.cli.bench train --experiments minilm --sized-batch 32 --seq-len 32 \
  --repeats 3 --min-time 2 --out $OUT 2>&1 | tee $OUT/log.txt
echo "load after: $(cat /proc/loadavg)" >> $OUT/machine.txt
