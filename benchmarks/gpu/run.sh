#!/usr/bin/env bash
# The GPU run, one command under 9 minutes on one H100/H200: correctness on CUDA, speed against the peers, and a
# quick quality run whose 10,000 samples come back as one uint8 array for FID-10k on the CPU machine.
#   bash benchmarks/gpu/prepare.sh                       # first, on the CPU machine: .gpu/ (wheels, data, LPIPS)
#   OUT=$OUT bash benchmarks/gpu/run.sh                   # on the GPU machine (device tool: carry=[".gpu"])
#   python benchmarks/gpu/fid.py $OUT/samples.npz --root .gpu/data/fashionmnist   # back here: FID-10k
#   DRY_RUN=1 OUT=/tmp/gpu bash benchmarks/gpu/run.sh    # the same steps on the CPU at toy sizes (make test runs it)
# Writes to $OUT (at most 8 files): run.log, tests.txt, sampling_speed.json, training_speed.json,
# tokenizer_speed.json, tokenizer_eval.json, gpt_eval.json, samples.npz.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/gpu}
PY=${PY:-python}
GPU=$PWD/.gpu
WORK=$(mktemp -d)
mkdir -p "$OUT"
LOG="$OUT/run.log"
: >"$LOG"
export PYTHONPATH=$PWD VQGPT_OFFLINE=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
if [ -d "$GPU/cache" ]; then export VQGPT_CACHE="$WORK/cache" && cp -r "$GPU/cache" "$VQGPT_CACHE"; fi
if ! $PY -c "import hydra" 2>/dev/null && [ -d "$GPU/wheels" ]; then
  $PY -m pip install --quiet --no-index --no-deps "$GPU"/wheels/*.whl >>"$LOG" 2>&1
fi

if [ "${DRY_RUN:-0}" = 1 ]; then  # the same code path, toy sizes, on the CPU
  DEVICE=cpu DATA="dataset=patterns dataset.channels=1 dataset.num_train=16 dataset.num_test=8 dataset.val_size=4" TOK_STEPS=2 GPT_STEPS=2 SAMPLES=20 SAMPLE_BATCH=10
  TESTS=(-k "fid_features or static_decode") SPEED=(--layers 1 --width 32 --heads 2 --tokens 16 --vocab 64 --runs 1)
  SAMPLING=(--batches 1 --no-compile) TRAINING=(--batch 2 --no-memory) TOKENIZER=(--batch 4 --steps 2 --warmup 1 --runs 1)
  TRAIN=(trainer.batch_size=8 trainer.eval_every=1000 trainer.sample_every=1000 trainer.checkpoint_every=1000
         trainer.device=cpu)
  TOK=(tokenizer.channels=8 tokenizer.z_channels=16 tokenizer.embed_dim=16 tokenizer.loss.disc_start=1
       tokenizer.loss.disc_channels=8)
  GPT=(gpt.n_layer=1 gpt.n_embd=32 gpt.n_head=2)
else
  DEVICE=cuda DATA="dataset=fashionmnist dataset.root=$GPU/data/fashionmnist" SAMPLES=10000 SAMPLE_BATCH=2000
  TOK_STEPS=${TOK_STEPS:-3000} GPT_STEPS=${GPT_STEPS:-4000}  # about 2.5 minutes each on an H100
  TESTS=() SPEED=() SAMPLING=(--batches 1 16 64 --runs 5) TOKENIZER=(--batch 128 --steps 20 --runs 3)
  TRAINING=(--layers 12 --width 768 --heads 12 --tokens 1024 --batch 16 --precision bf16 --compile --peak-tflops 989)
  TRAIN=(trainer.eval_every=1000000 trainer.sample_every=1000000 trainer.checkpoint_every=1000000
         trainer.compile=true trainer.fused_adamw=true)
  TOK=(tokenizer.loss.disc_start=$((TOK_STEPS / 2))) GPT=()
fi

status=0
step() {  # step NAME COMMAND...: run it, log its output and wall time, remember a failure, go on
  local name=$1 start
  shift
  start=$(date +%s)
  echo "== $name: $*" >>"$LOG"
  if "$@" >>"$LOG" 2>&1; then
    echo "== $name: ok in $(($(date +%s) - start)) s" | tee -a "$LOG"
  else
    status=1
    echo "== $name: FAILED after $(($(date +%s) - start)) s" | tee -a "$LOG"
  fi
}

# 1. correctness: CUDA against the CPU-verified paths (tests/test_gpu.py; the dry run checks two on the CPU)
step tests env VQGPT_GPU_DRY_RUN="${DRY_RUN:-0}" $PY -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_gpu.py tests/test_checkpoint.py::test_loads_onto_the_gpu_and_restores_cuda_streams "${TESTS[@]}" \
  --junitxml="$WORK/tests.xml"
grep -o 'tests="[0-9]*"\|failures="[0-9]*"\|errors="[0-9]*"\|skipped="[0-9]*"' "$WORK/tests.xml" 2>/dev/null \
  | head -4 >"$OUT/tests.txt" || true

# 2. speed against the peers (Hugging Face GPT-2 with vqgpt's weights)
step sampling_speed $PY benchmarks/sampling_speed.py --device $DEVICE "${SPEED[@]}" "${SAMPLING[@]}" \
  --out "$OUT/sampling_speed.json"
step training_speed $PY benchmarks/training_speed.py --device $DEVICE "${SPEED[@]}" "${TRAINING[@]}" \
  --out "$OUT/training_speed.json"
step tokenizer_speed $PY benchmarks/tokenizer_speed.py --device $DEVICE "${TOKENIZER[@]}" \
  --out "$OUT/tokenizer_speed.json"

# 3. quality in minutes: the Fashion-MNIST GPU recipes (LPIPS + PatchGAN tokenizer, then the GPT), 10k samples
step tokenizer $PY scripts/train_tokenizer.py experiment=tokenizer_fashionmnist $DATA dataset.image_size=32 \
  dataset.resize=pad trainer.max_steps=$TOK_STEPS "${TRAIN[@]}" "${TOK[@]}" hydra.run.dir="$WORK/tokenizer"
cp "$WORK/tokenizer/eval.json" "$OUT/tokenizer_eval.json" 2>/dev/null
# is its PatchGAN still looking at its input at this length? (on the CPU machine's recipes it went blind)
step discriminator $PY benchmarks/discriminator_probe.py "$WORK/tokenizer/checkpoints/last"
step gpt $PY scripts/train_gpt.py experiment=gpt_fashionmnist checkpoint_vae="$WORK/tokenizer/checkpoints/last" \
  trainer.max_steps=$GPT_STEPS "${TRAIN[@]}" "${GPT[@]}" cache_dir="$WORK/tokens" hydra.run.dir="$WORK/gpt"
cp "$WORK/gpt/eval.json" "$OUT/gpt_eval.json" 2>/dev/null
step samples $PY benchmarks/gpu/samples.py "$WORK/gpt/checkpoints/last" "$OUT/samples.npz" --num $SAMPLES \
  --batch $SAMPLE_BATCH --device $DEVICE

rm -rf "$WORK"
exit $status
