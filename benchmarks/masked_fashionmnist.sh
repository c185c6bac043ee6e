#!/usr/bin/env bash
# README's masked-vs-raster table on full Fashion-MNIST (apt-get install dataset-fashion-mnist), over the 20-minute
# recipe's tokenizer (benchmarks/frontier_fashionmnist.sh 20min first): its raster GPT against a MaskGIT of the
# same size, steps and batch (experiment=gpt_fashionmnist_20min_maskgit), and the raster GPT sampled in int8.
#   1. train the masked GPT (resumable; 1 thread)
#   2. FID-10k on the test split with class accuracy, 8 steps (the raster GPT's is the frontier's)
#   3. FID-2k on the val split against decoding steps 4, 8, 12, 16; the raster GPT's in int8 (fp32's: select
#      section 4, the same seed and samples); the confidence noise and temperature; the best once on test
#   5. the editing figures in docs/images
#   4. images/s at batch 1 and 64 and int8's token agreement (benchmarks/masked_speed.py): run it alone
# benchmarks/masked_table.py writes benchmarks/results/masked_fashionmnist.json and the table.
#   bash benchmarks/masked_fashionmnist.sh        # about 1 h on a 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
F=${FRONTIER:-outputs/frontier_fashionmnist/20min}
OUT=${OUT:-$F/masked}
VAE=$F/tokenizer/checkpoints/last
RASTER=$F/gpt/checkpoints/last
MASKED=$OUT/gpt/checkpoints/last
CLS=${CLS:-outputs/frontier_fashionmnist/classifier/checkpoints/last}
VAL=(fid.num_samples=2000 fid.reference_split=val device=cpu)
CHOSEN=${CHOSEN:-sampling.confidence_noise=10 sampling.temperature=1.2}  # chosen on val (section 3)
# MaskGIT's own sampling (noise 4.5, temperature 1), spelt out: the recipe's config now records CHOSEN in the GPT
BASE=(sampling.confidence_noise=null sampling.temperature=1.0)
export OMP_NUM_THREADS=1

[ -e "$OUT/gpt/done" ] || { $PY scripts/train_gpt.py experiment=gpt_fashionmnist_20min_maskgit checkpoint_vae="$VAE" \
  trainer.num_threads=1 trainer.progress_bar=false hydra.run.dir="$OUT/gpt" && touch "$OUT/gpt/done"; }
[ -e "$OUT/eval_test/eval.json" ] || $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" checkpoint_gpt="$MASKED" \
  checkpoint_classifier="$CLS" fid.num_samples=10000 "${BASE[@]}" hydra.run.dir="$OUT/eval_test"
for steps in 4 8 12 16; do
  [ -e "$OUT/val_steps$steps/eval.json" ] || $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" \
    checkpoint_gpt="$MASKED" sampling.steps=$steps "${BASE[@]}" "${VAL[@]}" hydra.run.dir="$OUT/val_steps$steps"
done
[ -e "$OUT/val_raster_int8/eval.json" ] || $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" \
  checkpoint_gpt="$RASTER" sampling.quantize=int8 "${VAL[@]}" hydra.run.dir="$OUT/val_raster_int8"
# the masked sampling's other options at 8 steps, on val: the confidence noise (MaskGIT's 4.5), temperature, both
while read -r name overrides; do
  # shellcheck disable=SC2086  # a list of overrides
  [ -e "$OUT/val_$name/eval.json" ] || $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" checkpoint_gpt="$MASKED" \
    $overrides "${VAL[@]}" hydra.run.dir="$OUT/val_$name" </dev/null
done <<'RUNS'
noise1.5 sampling.confidence_noise=1.5 sampling.temperature=1.0
noise10 sampling.confidence_noise=10 sampling.temperature=1.0
noise30 sampling.confidence_noise=30 sampling.temperature=1.0
t1.2 sampling.confidence_noise=null sampling.temperature=1.2
noise10_t1.2 sampling.confidence_noise=10 sampling.temperature=1.2
RUNS
# the best of them on val, once on the test split
# shellcheck disable=SC2086  # a list of overrides
[ -e "$OUT/eval_test_chosen/eval.json" ] || $PY scripts/evaluate.py stage=gpt checkpoint_vae="$VAE" \
  checkpoint_gpt="$MASKED" checkpoint_classifier="$CLS" fid.num_samples=10000 $CHOSEN \
  hydra.run.dir="$OUT/eval_test_chosen"
[ -e "$OUT/speed.json" ] || $PY benchmarks/masked_speed.py --vae "$VAE" --raster "$RASTER" --masked "$MASKED" \
  --out "$OUT/speed.json"
$PY benchmarks/masked_table.py "$OUT"
# 5. docs/masked.md's editing figures: a box in the middle (inpainting) and all but the middle (outpainting) of six
# test images, re-drawn by the masked GPT
$PY -c "from PIL import Image; m = Image.new('L', (32, 32), 255); m.paste(0, (8, 8, 24, 24)); m.save('$OUT/border.png')"
for edit in inpaint:box=[8,8,24,24] outpaint:mask=$OUT/border.png; do
  [ -e "$OUT/${edit%%:*}/edit.png" ] || $PY scripts/edit.py checkpoint_vae="$VAE" checkpoint_gpt="$MASKED" \
    "${edit#*:}" test_images=6 num_variations=5 hydra.run.dir="$OUT/${edit%%:*}"
  $PY -c "from PIL import Image; i = Image.open('$OUT/${edit%%:*}/edit.png'); \
i.resize((i.width * 2, i.height * 2), Image.NEAREST).save('docs/images/edit_${edit%%:*}_fashionmnist.png', optimize=True)"
done
