#!/usr/bin/env bash
# Before a session on a lent GPU machine (the `device` tool; it reaches no package index): put
# the packages its image lacks into .whl/ and the data sets into .gpu/data/, both ignored by
# git and named in the run's `carry`. Its image has PyTorch, Triton, Lightning, torchmetrics,
# tokenizers, sacrebleu, matplotlib, pytest-xdist (/work/.library/device/KINDS.md lists them);
# not Hydra or W&B. Run here, in the repository's root; then `.ci/gpu/session.sh N` there.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "commit first: the machine's runs record the commit they ran" >&2; exit 1
fi
pip() { .venv/bin/python -m pip "$@"; }
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
rm -rf .whl .gpu && mkdir -p .whl .gpu/data
# Wheels for the machine's Python 3.12 with their dependencies, then without those its image
# has (a second version of numpy or protobuf beside the image's would shadow it).
version() { pip show "$1" | awk '/^Version/{print $2}'; }
download() {
  pip download -q -d .whl/all --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "$@" 2>&1 | grep -v "^WARNING: Location" || true
}
download "wandb==$(version wandb)"
# Hydra's own needs are PyYAML, packaging (the image's) and antlr4 4.9.3, a source archive only.
download --no-deps "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
pip wheel -q --no-deps -w .whl/all "antlr4-python3-runtime==4.9.3" 2>&1 | grep -v "^WARNING: Location" || true
HAS=" $(tr 'A-Z_' 'a-z-' < .ci/gpu/image-packages.txt | tr '\n' ' ') "
for wheel in .whl/all/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
  [[ "$HAS" == *" $name "* ]] || mv "$wheel" .whl/
done
rm -rf .whl/all
ls .whl/wandb-*.whl .whl/hydra_core-*.whl .whl/omegaconf-*.whl .whl/antlr4_*.whl > /dev/null
# MNIST compressed (the machine unpacks it); the text data sets as they are.
mkdir -p .gpu/data/MNIST/raw
for f in /work/shared/data/MNIST/raw/*; do gzip -c "$f" > ".gpu/data/MNIST/raw/$(basename "$f").gz"; done
cp -r /work/shared/data/multi30k /work/shared/data/ud_english_ewt /work/shared/data/sst2 .gpu/data/
# The repository's history, so that each run's provenance names its commit there.
git clone -q --bare . .gpu/repo.git
ls .whl; du -sh .whl .gpu
