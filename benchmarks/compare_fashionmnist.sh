#!/usr/bin/env bash
# README's side-by-side: the three ways of writing images token by token on full Fashion-MNIST (32x32, padded;
# apt-get install dataset-fashion-mnist), at equal GPT size and steps: VQ-GAN codes (8x8 of K=256), the Image GPT
# pixel palette (32x32 of 16 greys), continuous 4x4 patches (8x8 of 16 numbers; the Gaussian, mixture and
# diffusion heads, and the MSE head as a baseline) and continuous latents (8x8 of 4 numbers, a KL autoencoder;
# the mixture and diffusion heads). Each GPT: experiment=gpt_demo (4 layers x 128), unconditional, 500 steps of 16. Then per
# GPT: test bits/dim and FID-2k (evaluate.py), a linear probe on 5,000/2,000 images and (VQ and pixel) 300 steps of
# fine-tuning (classify.py), and sample.py's grid, GIF and completion. benchmarks/compare_table.py turns it into benchmarks/results/compare_fashionmnist.json, the table
# and docs/images/compare_fashionmnist.png.
#   bash benchmarks/compare_fashionmnist.sh     # about 90 min on a 2-core CPU, most of it the pixel GPT
#   ROWS="patch_mixture patch_diffusion" bash benchmarks/compare_fashionmnist.sh   # some rows; the table keeps the
#                                                                                  # others from its JSON
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/compare}
PY=${PY:-.venv/bin/python}
# The VQ-GAN these numbers were measured with: the demo's, trained with L1 alone for 1,000 steps on all 60,000
# training images (the 20-minute recipe without its LPIPS, discriminator and held-out images); trained when missing.
VQ=${VQ:-outputs/compare/vq_tokenizer/checkpoints/last}
DATA="dataset=fashionmnist dataset.image_size=32 dataset.resize=pad"
GPT="experiment=gpt_demo gpt.num_classes=0 trainer.max_steps=500 trainer.batch_size=16 trainer.eval_every=1000
  trainer.sample_every=500 trainer.checkpoint_every=100"
mkdir -p "$OUT"

stage() {  # stage NAME COMMAND...: run it unless done, append its wall time
  local name=$1 start
  shift
  grep -q "\"stage\": \"$name\"" "$OUT/times.jsonl" 2>/dev/null && return 0
  start=$(date +%s)
  "$@"
  echo "{\"stage\": \"$name\", \"seconds\": $(($(date +%s) - start))}" >>"$OUT/times.jsonl"
}

ROWS=${ROWS:-vq pixel patch patch_mse patch_mixture patch_diffusion kl_mixture kl_diffusion}
case " $ROWS " in *" vq "*) [ -e "$VQ/config.json" ] || $PY scripts/train_tokenizer.py experiment=tokenizer_fashionmnist_20min \
  dataset.val_size=0 tokenizer.loss.perceptual_weight=0 tokenizer.loss.disc_start=1000000 \
  hydra.run.dir="${VQ%/checkpoints/last}" ;; esac
# shellcheck disable=SC2086  # $DATA and $GPT are lists of overrides
case " $ROWS " in *" pixel "*) stage pixel_tokenizer $PY scripts/train_tokenizer.py $DATA tokenizer=pixel \
  hydra.run.dir="$OUT/pixel_tokenizer" ;; esac
# shellcheck disable=SC2086
stage patch_tokenizer $PY scripts/train_tokenizer.py $DATA tokenizer=patch hydra.run.dir="$OUT/patch_tokenizer"
# The continuous latent tokenizer (MAR's and GIVT's way): the VQ row's VQ-GAN and recipe with a KL bottleneck
# (tokenizer/quantizer=kl) of 4 numbers per token instead of the codebook
case " $ROWS " in *" kl_"*) stage kl_tokenizer $PY scripts/train_tokenizer.py experiment=tokenizer_fashionmnist_kl \
  hydra.run.dir="$OUT/kl_tokenizer" ;; esac
for name in $ROWS; do
  case $name in
    vq) vae=$VQ; extra="" ;;
    patch* | kl_*) vae=$OUT/${name%%_*}_tokenizer/checkpoints/last; extra="gpt.head=${name#*_}" ;;
    *) vae=$OUT/${name}_tokenizer/checkpoints/last; extra="" ;;
  esac
  [ $name = patch ] && extra=""  # the default head, gaussian
  # shellcheck disable=SC2086
  stage ${name}_gpt $PY scripts/train_gpt.py $GPT $extra checkpoint_vae="$vae" hydra.run.dir="$OUT/${name}_gpt"
  ckpt=$OUT/${name}_gpt/checkpoints/last
  stage ${name}_eval $PY scripts/evaluate.py stage=gpt checkpoint_vae="$vae" checkpoint_gpt="$ckpt" \
    fid.num_samples=2000 hydra.run.dir="$OUT/${name}_eval"
  [ $name = patch_mse ] && continue  # the same features as patch: no second probe
  stage ${name}_probe $PY scripts/classify.py checkpoint_gpt="$ckpt" checkpoint_vae="$vae" probe.train_images=5000 \
    probe.test_images=2000 hydra.run.dir="$OUT/${name}_probe"
  case $name in patch* | kl_*) ;; *) stage ${name}_finetune $PY scripts/classify.py checkpoint_gpt="$ckpt" \
    checkpoint_vae="$vae" mode=finetune trainer.max_steps=300 trainer.batch_size=16 trainer.num_threads=1 \
    hydra.run.dir="$OUT/${name}_finetune" ;; esac
  stage ${name}_sample $PY scripts/sample.py checkpoint_vae="$vae" checkpoint_gpt="$ckpt" sampling.num_samples=16 \
    gif=true completion=true hydra.run.dir="$OUT/${name}_sample"
done
# the Gaussian head's noise at half its scale
case " $ROWS " in *" patch "*) stage patch_t05_eval $PY scripts/evaluate.py stage=gpt \
  checkpoint_vae="$OUT/patch_tokenizer/checkpoints/last" checkpoint_gpt="$OUT/patch_gpt/checkpoints/last" \
  fid.num_samples=2000 sampling.temperature=0.5 hydra.run.dir="$OUT/patch_t05_eval" ;; esac
$PY benchmarks/compare_table.py "$OUT"
