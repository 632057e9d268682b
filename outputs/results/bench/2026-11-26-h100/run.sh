#!/bin/bash
# Issue 21, session 10: one device call. Benchmarks first (GPU alone), then the GPU tests beside
# six mnist_encoder trainings (3 seeds x scratch/torch). Everything lands in $OUT as <= 8 files.
START=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/setup.txt 2>&1 || { cat $OUT/setup.txt; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline
cp -r .gpu/repo/.git .git 2>/dev/null
L=/tmp/logs; B=/tmp/bench; mkdir -p $L $B
{ nvidia-smi; python3 -c "import torch,triton,lightning,hydra,wandb;print(torch.__version__,triton.__version__,lightning.__version__,hydra.__version__,wandb.__version__)"; git rev-parse HEAD; git status --porcelain --untracked-files=no; } > $L/env.txt 2>&1
pack() { tar czf $OUT/logs.tgz -C /tmp logs bench 2>/dev/null; }
b() { local t=$1; shift; local name=$1; shift; echo "== $name $(($SECONDS-START))s" >> $L/timeline.txt
  timeout $t python3 -m attention_lab.bench "$@" --out $B/$name > $L/bench-$name.log 2>&1; echo "$name rc=$? $(($SECONDS-START))s" >> $L/timeline.txt; pack; }
A="attention --device cuda --batch 4 --d-model 512 --heads 8 --masks none causal --sdpa-backends flash efficient"
b 95 attention-bf16 $A --dtypes bf16 --seq-lens 1024 4096 8192 --repeats 2 --min-time 0.25
b 60 train-bf16 train --device cuda --precision bf16 --repeats 2 --min-time 0.4
b 70 attention-fp16 $A --dtypes fp16 --seq-lens 1024 4096 8192 --repeats 2 --min-time 0.2
b 45 attention-fp32 $A --dtypes fp32 --seq-lens 1024 4096 --repeats 2 --min-time 0.2
b 75 train-bf16-compiled train --device cuda --precision bf16 --compile --experiments vit_mnist --kinds scratch scratch_flash scratch_triton torch --repeats 2 --min-time 0.4
# Phase 2: trainings and tests side by side until the deadline.
mkdir -p .gpu/data/MNIST/raw && gunzip -f .gpu/data/MNIST/raw/*.gz
P2=$SECONDS; echo "== phase2 $(($P2-START))s" >> $L/timeline.txt
for kind in scratch torch; do for seed in 0 1 2; do
  OMP_NUM_THREADS=1 DATA_DIR=$PWD/.gpu/data python3 train.py trainer=gpu logger=csv experiment=mnist_encoder model.attention=$kind seed=$seed hydra.run.dir=/tmp/runs/mnist_encoder_${kind}_s$seed > $L/train-${kind}-s$seed.log 2>&1 &
done; done
LEFT=$((555 - (SECONDS-START)))
timeout $((LEFT - 20)) python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 150 -m "gpu or not gpu" tests/test_gpu.py tests/test_triton_flash.py > $L/pytest-gpu.txt 2>&1; echo "pytest rc=$? $(($SECONDS-START))s" >> $L/timeline.txt
pack
while [ $((SECONDS-START)) -lt 560 ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
echo "trainings left running at $(($SECONDS-START))s: $(jobs -rp | wc -l)" >> $L/timeline.txt
kill $(jobs -rp) 2>/dev/null; sleep 1
tar czf $OUT/runs.tgz --exclude='*.ckpt' -C /tmp runs 2>/dev/null
pack; cat $L/timeline.txt
