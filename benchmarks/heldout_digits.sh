#!/usr/bin/env bash
# The held-out check: the 20-minute recipe (make demo's configs) on a folder of images it was never tuned on, the
# way a user brings one (dataset=folder). The folder: UCI's handwritten digits from scikit-learn, upscaled to 32x32
# (benchmarks/digits_folder.py; 1,442 train / 355 test images in class sub-folders).
#   bash benchmarks/heldout_digits.sh        # about 25 minutes alone on a 2-core CPU; resumable
#   THREADS=1 bash benchmarks/heldout_digits.sh    # one torch thread a stage (the recipes' two: with another
#                                                  # process busy on the other core)
# Two settings a small folder needs, added to the recipe: 200 of the training images held out
# (dataset.val_size=200), and the GPT's best checkpoint kept by their loss (trainer.keep_best=loss): the recipe's
# 3,500 steps of 64 are 155 passes over this folder, far past where the held-out loss is lowest. Then on the test
# split: the tokenizer's rFID/PSNR/LPIPS, and for both GPT checkpoints (best, and last: the whole 3,500 steps) the
# loss, bits/dim, FID of 1,000 class-balanced samples (against 355 test images: compare it only with this folder's
# rFID) and their class accuracy under a small CNN trained on the folder, a grid of samples of each
# (outputs/heldout_digits/samples_{best,last}) and how near those come to the training digits
# (benchmarks/nearest_train.py: near copies); the JSON: benchmarks/heldout_table.py ->
# benchmarks/results/heldout_digits.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/heldout_digits}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS  # evaluate.py's and sample.py's torch threads
DATA=(dataset=folder dataset.root="$OUT/data")
VAE=$OUT/tokenizer/checkpoints/last
CLS=$OUT/classifier/checkpoints/last

# shellcheck source=benchmarks/train_or_resume.sh
source benchmarks/train_or_resume.sh  # train DIR SCRIPT ARGS...

[ -d "$OUT/data" ] || $PY benchmarks/digits_folder.py "$OUT/data"
train "$OUT/tokenizer" train_tokenizer.py experiment=tokenizer_demo "${DATA[@]}" dataset.val_size=200 \
  trainer.num_threads="$THREADS"
train "$OUT/gpt" train_gpt.py experiment=gpt_demo checkpoint_vae="$VAE" trainer.keep_best=loss \
  trainer.num_threads="$THREADS"
train "$OUT/classifier" train_classifier.py "${DATA[@]}" dataset.image_size=32 dataset.channels=1 \
  dataset.resize=pad trainer.max_steps=1000 trainer.num_threads="$THREADS"
[ -e "$OUT/eval_tokenizer/eval.json" ] || $PY scripts/evaluate.py stage=tokenizer checkpoint_vae="$VAE" \
  hydra.run.dir="$OUT/eval_tokenizer"
for ckpt in best last; do
  [ -e "$OUT/eval_gpt_$ckpt/eval.json" ] || $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" \
    checkpoint_gpt="$OUT/gpt/checkpoints/$ckpt" checkpoint_classifier="$CLS" fid.num_samples=1000 \
    hydra.run.dir="$OUT/eval_gpt_$ckpt"
done
for ckpt in best last; do  # 10 samples a class of each, and how near they come to the training digits
  [ -e "$OUT/samples_$ckpt/done" ] || { $PY scripts/sample.py checkpoint_vae="$VAE" \
    checkpoint_gpt="$OUT/gpt/checkpoints/$ckpt" sampling.num_samples=10 hydra.run.dir="$OUT/samples_$ckpt" \
    && touch "$OUT/samples_$ckpt/done"; }
done
$PY benchmarks/nearest_train.py "$OUT/data" --samples "$OUT/samples_best/images" "$OUT/samples_last/images" \
  >"$OUT/nearest_train.json"
$PY benchmarks/heldout_table.py "$OUT"
