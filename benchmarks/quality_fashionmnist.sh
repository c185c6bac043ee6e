#!/usr/bin/env bash
# README's quality table on full Fashion-MNIST (apt-get install dataset-fashion-mnist), on the CPU recipes:
# train the tokenizer and the GPT, then FID-10k of class-balanced samples against the 10,000 test images and
# the tokenizer's rFID/PSNR/SSIM/LPIPS on them. Each stage's wall time goes to $OUT/times.jsonl, and
# benchmarks/quality_table.py turns the eval.json files into benchmarks/results/quality_fashionmnist.json.
#   bash benchmarks/quality_fashionmnist.sh            # about 80 min on an idle 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/quality_fashionmnist}
PY=${PY:-.venv/bin/python}
VAE=$OUT/tokenizer/checkpoints/last
GPT=$OUT/gpt/checkpoints/last
mkdir -p "$OUT"

stage() {  # stage NAME COMMAND...: run it, append its wall time
  local name=$1 start
  shift
  start=$(date +%s)
  "$@"
  echo "{\"stage\": \"$name\", \"seconds\": $(($(date +%s) - start)), \"command\": \"$*\"}" >>"$OUT/times.jsonl"
}

[ -e "$VAE/config.json" ] || stage tokenizer $PY scripts/train_tokenizer.py experiment=tokenizer_fashionmnist_cpu \
  hydra.run.dir="$OUT/tokenizer"
[ -e "$GPT/config.json" ] || stage gpt $PY scripts/train_gpt.py experiment=gpt_fashionmnist_cpu checkpoint_vae="$VAE" \
  hydra.run.dir="$OUT/gpt"
# the first evaluation also computes the test split's Inception statistics once (cached for the second)
stage eval_gpt $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" checkpoint_gpt="$GPT" fid.num_samples=10000 \
  hydra.run.dir="$OUT/eval_gpt"
stage eval_tokenizer $PY scripts/evaluate.py stage=tokenizer checkpoint_vae="$VAE" hydra.run.dir="$OUT/eval_tokenizer"
# a guidance sweep on 2,000 samples (its own protocol column: another N)
stage eval_gpt_sweep $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" checkpoint_gpt="$GPT" \
  fid.num_samples=2000 'cfg_scales=[1.5,2,3]' hydra.run.dir="$OUT/eval_gpt_sweep"
$PY benchmarks/quality_table.py "$OUT"
