#!/usr/bin/env bash
# One call on a lent GPU machine, the prepared work of the GPU issue, in parts that fit its
# 10-minute limit per command (15 minutes of device time a session, start-up included):
#   .ci/gpu/prepare.sh here, after the last commit; then the device's run with carry
#   [.whl, .gpu] and timeout_s 600:  bash .ci/gpu/session.sh 1   (then 2, DEADLINE=200 if short)
# 1: the eager GPU tests and the Triton tests, then the Triton kernel over block sizes, stages
#    and warps beside PyTorch's FlashAttention-2, alone on the GPU.
# 2: MFU at BERT-base and ViT-B/16 sizes (bf16, compiled), then the compiled GPU tests beside
#    sst2_transformer's seeds.
# It leaves in $OUT: logs.tgz (timeline, environment, benchmark tables, test logs) and
# runs-N.tgz (run directories without checkpoints). outputs/results/bench/<date>-h200/ takes
# the tables and the timeline, `python -m attention_lab.cli.report keep` the run directories.
set -u
PART=${1:?part 1 or 2}
START=$SECONDS; DEADLINE=${DEADLINE:-560}  # seconds; leaves the call's 600 room to pack
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > "$OUT/setup.txt" 2>&1 || { cat "$OUT/setup.txt"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=offline
export DATA_DIR=$PWD/.gpu/data
gunzip -fq .gpu/data/MNIST/raw/*.gz 2>/dev/null
[ -d .git ] || { mv .gpu/repo.git .git && git config core.bare false && git reset -q; }
L=/tmp/logs; B=/tmp/bench; R=/tmp/runs-$PART; mkdir -p $L $B $R
{ nvidia-smi; git rev-parse HEAD; git status --porcelain --untracked-files=no; } > $L/env-$PART.txt 2>&1
python3 -c "import torch, triton, lightning, hydra, wandb, attention_lab
print(torch.__version__, triton.__version__, lightning.__version__, hydra.__version__, wandb.__version__)" \
  >> $L/env-$PART.txt 2>&1 || { cat $L/env-$PART.txt; exit 1; }
mark() { echo "$1 $(($SECONDS - START))s" >> $L/timeline-$PART.txt; }
pack() { tar czf "$OUT/logs.tgz" -C /tmp logs bench 2>/dev/null; }
left() { echo $((DEADLINE - (SECONDS - START))); }
limited() {  # limited SECONDS COMMAND...: COMMAND for at most SECONDS, capped by the deadline
  local t=$(( $1 < $(left) ? $1 : $(left) ))
  if (( t > 0 )); then timeout "$t" "${@:2}"; else echo "no time left" >&2; return 124; fi
}
bench() {  # bench SECONDS NAME ARGS...: one benchmark (its table is written when it ends)
  local limit=$1 name=$2; shift 2; mark "== $name"
  limited "$limit" python3 -m attention_lab.cli.bench "$@" --out "$B/$name" > "$L/bench-$name.log" 2>&1
  mark "$name rc=$?"; pack
}
train() {  # train NAME OVERRIDES...: one run in the background, one CPU thread
  OMP_NUM_THREADS=1 python3 train.py trainer=gpu logger=csv hydra.run.dir=$R/$1 "${@:2}" \
    > "$L/train-$1.log" 2>&1 &
}
tests() {  # tests NAME ARGS...: pytest until the deadline (less 40 s); -rfE names each failure
  mark "== pytest-$1"
  limited $(( $(left) - 40 )) python3 -m pytest -p no:cacheprovider -q -rfE --timeout 240 "${@:2}" \
    > "$L/pytest-$1.txt" 2>&1
  mark "pytest-$1 rc=$?"; pack
}
TUNE="flash-blocks --device cuda --kinds scratch_triton --dtypes bf16 --batch 4 --d-model 512
  --heads 8 --block-sizes 64 128 --stages 3 4 --warps 4 8 --sdpa-backends flash --repeats 2
  --min-time 0.1"
if [ "$PART" = 1 ]; then
  # test_triton_flash.py has no gpu mark: its own process, beside; test_gpu.py stays in one
  # process (its tests time and share the device), eager cases only. At most 300 s.
  DEADLINE=$(( SECONDS - START + 340 )) tests triton -n 4 tests/test_triton_flash.py & TRITON=$!
  DEADLINE=$(( SECONDS - START + 340 )) tests gpu-eager -n 0 -m gpu -k "not compiled" tests/test_gpu.py
  wait $TRITON
  for mask in none causal; do  # then alone on the GPU, one table each: one lost, not both
    bench 110 triton-$mask $TUNE --masks $mask --seq-lens 8192 4096
  done
else
  bench 150 mfu train --device cuda --precision bf16 --compile --experiments bert_base vit_b_16 \
    --kinds scratch_triton scratch_fused torch --repeats 2 --min-time 0.5
  for kind in scratch torch; do for seed in 0 1 2; do
    train sst2_transformer-$kind-s$seed experiment=sst2_transformer model.attention=$kind seed=$seed
  done; done
  tests gpu-compiled -n 0 -m gpu -k compiled tests/test_gpu.py
fi
while (( $(left) > 30 )) && [ -n "$(jobs -rp)" ]; do sleep 2; done
mark "trainings still running: $(jobs -rp | wc -l) (sent SIGTERM: each saves last.ckpt)"
kill -TERM $(jobs -rp) 2>/dev/null
for _ in $(seq 20); do [ -z "$(jobs -rp)" ] && break; sleep 1; done
kill -KILL $(jobs -rp) 2>/dev/null
tar czf "$OUT/runs-$PART.tgz" --exclude='*.ckpt' --exclude=wandb -C /tmp runs-$PART 2>/dev/null
mark "packed"; pack; cat $L/timeline-$PART.txt
