#!/usr/bin/env bash
# The quality frontier on full Fashion-MNIST (apt-get install dataset-fashion-mnist), 32x32 padded: for each CPU
# budget, train experiment=tokenizer_fashionmnist_<budget> and experiment=gpt_fashionmnist_<budget>, then measure
# once on the test split: the tokenizer's rFID/PSNR/SSIM/LPIPS, the GPT's bits/dim, and FID-10k of 10,000
# class-balanced samples with their class accuracy under a small CNN (trained once, $OUT/classifier).
# The recipes' settings were chosen on dataset.val_size=2000 held-out training images (docs/quality.md).
#   bash benchmarks/frontier_fashionmnist.sh              # every budget: 20min 1h 2h, and 1h_kl (the 1-hour
#                                                         # budget with continuous tokens: a KL autoencoder's
#                                                         # latents and a diffusion head)
#   bash benchmarks/frontier_fashionmnist.sh 20min        # one; run it alone on the machine (its times are the point)
#   TRAIN_ONLY=1 bash benchmarks/frontier_fashionmnist.sh 20min   # train, measure later (a second call)
# Resumable: a finished stage is skipped, and a training that was stopped resumes from its last checkpoint.
# Each stage's wall time goes to $OUT/<budget>/times.jsonl; benchmarks/frontier_table.py makes the JSON under
# benchmarks/results/, README's table and the FID-against-hours plot.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/frontier_fashionmnist}
PY=${PY:-.venv/bin/python}
BUDGETS=${*:-20min 1h 2h 1h_kl}
DATA=(dataset=fashionmnist dataset.image_size=32 dataset.resize=pad dataset.val_size=2000)
# How each budget's GPT samples, chosen by FID-2k on the val split (docs/quality.md)
# 20min: no guidance (cfg_scale 1.5 and 2.5 gave FID-2k 30.2 and 33.7 against 29.7); the others: as 20min, not swept
declare -A SAMPLING=([20min]="" [1h]="" [2h]="" [1h_kl]="")

stage() {  # stage DIR NAME COMMAND...: run it, append its wall time to DIR/times.jsonl
  local dir=$1 name=$2 start
  shift 2
  mkdir -p "$dir"
  start=$(date +%s)
  "$@"
  echo "{\"stage\": \"$name\", \"seconds\": $(($(date +%s) - start)), \"command\": \"$*\"}" >>"$dir/times.jsonl"
}

# shellcheck source=benchmarks/train_or_resume.sh
source benchmarks/train_or_resume.sh  # train DIR SCRIPT ARGS...

CLS=$OUT/classifier
[ -e "$CLS/done" ] || stage "$OUT" classifier train "$CLS" train_classifier.py "${DATA[@]}" trainer.max_steps=1000 \
  trainer.num_threads=2

for b in $BUDGETS; do
  D=$OUT/$b
  VAE=$D/tokenizer/checkpoints/last
  GPT=$D/gpt/checkpoints/last
  [ -e "$D/tokenizer/done" ] || stage "$D" tokenizer train "$D/tokenizer" train_tokenizer.py \
    experiment="tokenizer_fashionmnist_$b"
  [ -e "$D/gpt/done" ] || stage "$D" gpt train "$D/gpt" train_gpt.py experiment="gpt_fashionmnist_$b" \
    checkpoint_vae="$VAE"
  [ -n "${TRAIN_ONLY:-}" ] && continue  # TRAIN_ONLY=1: the training stages alone (a machine to itself)
  # shellcheck disable=SC2086  # SAMPLING holds a list of overrides
  [ -e "$D/eval_gpt/eval.json" ] || stage "$D" eval_gpt "$PY" scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" \
    checkpoint_gpt="$GPT" checkpoint_classifier="$CLS/checkpoints/last" fid.num_samples=10000 ${SAMPLING[$b]:-} \
    hydra.run.dir="$D/eval_gpt"
  [ -e "$D/eval_tokenizer/eval.json" ] || stage "$D" eval_tokenizer "$PY" scripts/evaluate.py stage=tokenizer \
    checkpoint_vae="$VAE" hydra.run.dir="$D/eval_tokenizer"
done
[ -n "${TRAIN_ONLY:-}" ] || $PY benchmarks/frontier_table.py "$OUT"
