#!/usr/bin/env bash
# One call on a lent GPU machine, the prepared work of the GPU issue, in parts that fit its
# 10-minute limit per command (15 minutes of device time a session, start-up included):
#   device run, carry [.whl, .gpu], timeout_s 600:  bash .ci/gpu/session.sh 1   (then 2)
# 1: the Triton kernel over block sizes, stages and warps beside PyTorch's FlashAttention-2
#    (alone on the GPU), then the eager GPU tests beside ud_pos_transformer's seeds.
# 2: MFU at BERT-base and ViT-B/16 sizes (bf16, compiled), then the compiled GPU tests beside
#    sst2_transformer's seeds (what the session's time allows: DEADLINE=200 for a short call).
# Everything lands in $OUT (logs.tgz, runs.tgz: run directories without checkpoints);
# outputs/results/bench/<date>-h200/ takes the tables and this script's timeline, and
# `python -m attention_lab.cli.report keep` the run directories.
set -u
PART=${1:?part 1 or 2}
START=$SECONDS; DEADLINE=${DEADLINE:-560}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > "$OUT/setup.txt" 2>&1 || { cat "$OUT/setup.txt"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=offline
export DATA_DIR=$PWD/.gpu/data
gunzip -fq .gpu/data/MNIST/raw/*.gz 2>/dev/null
[ -d .git ] || { mv .gpu/repo.git .git && git config core.bare false && git reset -q; }
L=/tmp/logs; B=/tmp/bench; R=/tmp/runs; mkdir -p $L $B $R
{ nvidia-smi; python3 -c "import torch, triton, lightning, hydra, wandb
print(torch.__version__, triton.__version__, lightning.__version__, hydra.__version__, wandb.__version__)"
  git rev-parse HEAD 2>/dev/null; } > $L/env-$PART.txt 2>&1
mark() { echo "$1 $(($SECONDS - START))s" >> $L/timeline-$PART.txt; }
pack() { tar czf "$OUT/logs.tgz" -C /tmp logs bench 2>/dev/null; }
left() { echo $((DEADLINE - (SECONDS - START))); }
bench() {  # bench SECONDS NAME ARGS...: one benchmark, alone, under a time limit
  local limit=$1 name=$2; shift 2; mark "== $name"
  timeout "$limit" python3 -m attention_lab.cli.bench "$@" --out "$B/$name" > "$L/bench-$name.log" 2>&1
  mark "$name rc=$?"; pack
}
train() {  # train NAME OVERRIDES...: one run in the background, one CPU thread
  OMP_NUM_THREADS=1 python3 train.py trainer=gpu logger=csv hydra.run.dir=$R/$1 "${@:2}" \
    > "$L/train-$1.log" 2>&1 &
}
pytest_gpu() {  # pytest_gpu NAME ARGS...: the GPU tests until the deadline, a summary line kept
  mark "== pytest-$1"
  timeout $(( $(left) - 15 )) python3 -m pytest -p no:cacheprovider -q -rfE --timeout 240 \
    -m gpu "${@:2}" > "$L/pytest-gpu-$1.txt" 2>&1
  mark "pytest-$1 rc=$?"; pack
}
if [ "$PART" = 1 ]; then
  for mask in none causal; do  # one table each, kept even if the other runs out of time
    bench 120 triton-tune-$mask flash-blocks --device cuda --kinds scratch_triton --dtypes bf16 \
      --masks $mask --seq-lens 4096 8192 --batch 4 --d-model 512 --heads 8 \
      --block-sizes 64 128 --stages 3 4 --warps 4 8 --sdpa-backends flash --repeats 2 --min-time 0.1
  done
  for kind in scratch torch; do for seed in 0 1 2; do
    train ud_pos_transformer-$kind-s$seed experiment=ud_pos_transformer model.attention=$kind seed=$seed
  done; done
  pytest_gpu eager -n 8 -k "not compiled" tests/test_gpu.py tests/test_triton_flash.py
else
  bench 150 mfu train --device cuda --precision bf16 --compile --experiments bert_base vit_b_16 \
    --kinds scratch_triton scratch_fused torch --repeats 2 --min-time 0.5
  for kind in scratch torch; do for seed in 0 1 2; do
    train sst2_transformer-$kind-s$seed experiment=sst2_transformer model.attention=$kind seed=$seed
  done; done
  pytest_gpu compiled -n 6 -k compiled tests/test_gpu.py
fi
while [ "$(left)" -gt 5 ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
mark "trainings still running: $(jobs -rp | wc -l) (stopped)"
kill -TERM $(jobs -rp) 2>/dev/null; sleep 3  # SIGTERM: each saves last.ckpt and its records
tar czf "$OUT/runs-$PART.tgz" --exclude='*.ckpt' --exclude=wandb -C /tmp runs 2>/dev/null
pack; cat $L/timeline-$PART.txt
