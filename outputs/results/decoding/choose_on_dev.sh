#!/usr/bin/env bash
# Beam size and length penalty for a translation checkpoint, chosen on the validation split
# (#31): every setting below decodes Multi30k's 1,014 dev sentences with the checkpoint, and
# writes its val/bleu and val/bleu_lc to OUT/<setting>/metrics.json; the test set is not read.
#   bash outputs/results/decoding/choose_on_dev.sh RUN_DIR/checkpoints/epoch009.ckpt OUT
# Then: python outputs/results/decoding/summarise.py OUT   (a Markdown table, best first)
set -euo pipefail
ckpt=$1; out=$2
mkdir -p "$out"
evaluate() {  # name, then overrides
  local name=$1; shift
  [ -f "$out/$name/metrics.json" ] && return  # done before: kept
  python -m attention_lab.cli.evaluate ckpt="$ckpt" split=val out="$out/$name" \
    trainer.enable_progress_bar=false "$@" > "$out/$name.log" 2>&1
}
evaluate greedy task.test_decoding=greedy
for alpha in 0.0 0.6 1.0 1.5; do
  evaluate "beam5-alpha$alpha" task.test_decoding=beam task.beam_size=5 task.length_penalty=$alpha
done
evaluate beam10-alpha0.6 task.test_decoding=beam task.beam_size=10 task.length_penalty=0.6
