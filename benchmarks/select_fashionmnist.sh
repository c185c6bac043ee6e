#!/usr/bin/env bash
# How the frontier recipes were chosen: every candidate trained on full Fashion-MNIST less dataset.val_size=2000
# held-out training images, and measured on those 2,000 (rFID-2k for tokenizers, FID-2k of 2,000 class-balanced
# samples for GPTs), never on the test split. One thread per run (they ran two or three at a time, 2026-12-04).
#   bash benchmarks/select_fashionmnist.sh                  # every run not done yet (a stopped one resumes), then
#                                                           # the table
# benchmarks/select_table.py writes benchmarks/results/select_fashionmnist.json; docs/quality.md reads it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/select_fashionmnist}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
ONE=(trainer.num_threads=1 trainer.progress_bar=false)
# the 20-minute recipe's tokenizer settings (no PatchGAN since these runs chose so), less the losses under test
TOK=(experiment=tokenizer_fashionmnist_20min "${ONE[@]}")
GPT=(experiment=gpt_fashionmnist_20min "${ONE[@]}" fid_samples=2000 fid.reference_split=val)

resume() {  # resume DIR: resume=true when DIR holds a checkpoint of a stopped run (Ctrl-C, SIGTERM, a kill)
  [ -e "$1/checkpoints/last/config.json" ] && echo resume=true
  return 0
}

tokenizer() {  # tokenizer NAME OVERRIDES...: train (or resume), then rFID-2k on the val split
  local name=$1
  shift
  local dir=$OUT/$name
  # shellcheck disable=SC2046  # resume's word, or none
  [ -e "$dir/done" ] || { $PY scripts/train_tokenizer.py "${TOK[@]}" "$@" $(resume "$dir") hydra.run.dir="$dir" \
    && touch "$dir/done"; }
  [ -e "$OUT/eval_$name/eval.json" ] || $PY scripts/evaluate.py stage=tokenizer checkpoint_vae="$dir/checkpoints/last" \
    fid.reference_split=val device=cpu hydra.run.dir="$OUT/eval_$name"
}

gpt() {  # gpt NAME TOKENIZER STEPS OVERRIDES...: train with FID-2k on the val split at its last step
  local name=$1 tok=$2 steps=$3
  shift 3
  local dir=$OUT/$name
  # shellcheck disable=SC2046
  [ -e "$dir/done" ] || { $PY scripts/train_gpt.py "${GPT[@]}" checkpoint_vae="$OUT/$tok/checkpoints/last" \
    trainer.max_steps="$steps" trainer.eval_every="$steps" trainer.sample_every="$steps" "$@" $(resume "$dir") \
    hydra.run.dir="$dir" && touch "$dir/done"; }
}

# 1. the tokenizer's losses at 1000 steps of 32: L1 alone; + LPIPS (AlexNet's, 1/30 of VGG's cost) and the PatchGAN
# from step 500; + LPIPS (VGG's) and the PatchGAN; AlexNet's for 2200 steps (GAN from 1000; 1.3x VGG's compute); and
# LPIPS (VGG's) without the GAN
tokenizer t_l1 tokenizer.loss.perceptual_weight=0 tokenizer.loss.disc_start=1000000
tokenizer t_alex_disc tokenizer.loss.perceptual_net=alex tokenizer.loss.disc_start=500
tokenizer t_vgg_disc tokenizer.loss.disc_start=500  # the recipe's settings then; it has no GAN now
tokenizer t_alex_disc_2200 tokenizer.loss.perceptual_net=alex tokenizer.loss.disc_start=1000 trainer.max_steps=2200 \
  trainer.eval_every=2200 trainer.sample_every=2200 trainer.checkpoint_every=1100
# + LPIPS (VGG's) alone, no GAN: what the PatchGAN adds to t_vgg_disc (added later, run alone at two threads)
tokenizer t_vgg tokenizer.loss.disc_start=1000000 trainer.num_threads=2

# 2. the GPT's shape at about equal time, over t_vgg_disc's codes
gpt g_4x128_3500 t_vgg_disc 3500
gpt g_6x192_1400 t_vgg_disc 1400 gpt.n_layer=6 gpt.n_head=6 gpt.n_embd=192
# ... and the 4x128 over the LPIPS-only tokenizer's codes: does its better rFID carry to the samples?
gpt g_4x128_3500_t_vgg t_vgg 3500

# 3. guidance, over g_4x128_3500 (its own run measured it without)
for scale in 1.5 2.5; do
  [ -e "$OUT/sweep_g_4x128_3500_cfg$scale/eval.json" ] || $PY scripts/evaluate.py stage=gpt device=cpu \
    checkpoint_vae="$OUT/t_vgg_disc/checkpoints/last" checkpoint_gpt="$OUT/g_4x128_3500/checkpoints/last" \
    fid.num_samples=2000 fid.reference_split=val sampling.cfg_scale=$scale hydra.run.dir="$OUT/sweep_g_4x128_3500_cfg$scale"
done

# 4. the seed spread of the 20-minute recipe's GPT, over the frontier run's tokenizer: its own GPT (seed 0) and a
# second one trained with seed 1, both measured by FID-2k on the val split
F=${FRONTIER:-outputs/frontier_fashionmnist/20min}
[ -e "$OUT/sweep_g_20min_seed0/eval.json" ] || $PY scripts/evaluate.py stage=gpt device=cpu \
  checkpoint_vae="$F/tokenizer/checkpoints/last" checkpoint_gpt="$F/gpt/checkpoints/last" fid.num_samples=2000 \
  fid.reference_split=val hydra.run.dir="$OUT/sweep_g_20min_seed0"
[ -e "$OUT/g_20min_seed1/done" ] || { $PY scripts/train_gpt.py "${GPT[@]}" checkpoint_vae="$F/tokenizer/checkpoints/last" \
  trainer.seed=1 trainer.eval_every=3500 hydra.run.dir="$OUT/g_20min_seed1" && touch "$OUT/g_20min_seed1/done"; }

# 5. the 1-hour budget (about 3x the 20-minute recipe's compute): its tokenizer for 3500 steps (the GAN from 1000),
# then the 20-minute GPT for 11,000 steps over its codes, alone on the machine at two threads (the frontier's
# terms), so its log holds the recipe's time. (The tokenizer ran in pieces; 6x192 for 4,500 steps was stopped
# when t_vgg showed the GAN hurting: the shape is to be compared over the next 1-hour tokenizer.)
TWO=(trainer.num_threads=2)
tokenizer t_vgg_disc_3500 tokenizer.loss.disc_start=1000 trainer.max_steps=3500 trainer.eval_every=3500 \
  trainer.sample_every=3500 "${TWO[@]}"
gpt g1h_4x128_11000 t_vgg_disc_3500 11000 "${TWO[@]}"

# 6. the next 1-hour tokenizer, without the GAN (t_vgg beat t_vgg_disc, section 1), alone at two threads
tokenizer t_vgg_3500 tokenizer.loss.disc_start=1000000 trainer.max_steps=3500 trainer.eval_every=3500 \
  trainer.sample_every=3500 "${TWO[@]}"

# 7. the 2-hour budget: that tokenizer (about 22 minutes) and, for the rest, a GPT of 4 layers x 192 (1.8 M
# parameters, 1.45x the 20-minute one's time per step: the compute-optimal size grows with the budget; not
# compared with other shapes at this budget) for 18,000 steps, its loss on the held-out images every 1,000 steps
# (FID-2k, 2.5 minutes each, once at the end, by evaluate.py)
gpt g2h_4x192_18000 t_vgg_3500 18000 gpt.n_head=6 gpt.n_embd=192 trainer.eval_every=1000 \
  trainer.checkpoint_every=1000 fid_samples=0 "${TWO[@]}"
[ -e "$OUT/sweep_g2h_4x192_18000/eval.json" ] || $PY scripts/evaluate.py stage=gpt device=cpu \
  checkpoint_vae="$OUT/t_vgg_3500/checkpoints/last" checkpoint_gpt="$OUT/g2h_4x192_18000/checkpoints/last" \
  fid.num_samples=2000 fid.reference_split=val hydra.run.dir="$OUT/sweep_g2h_4x192_18000"

$PY benchmarks/select_table.py "$OUT"
