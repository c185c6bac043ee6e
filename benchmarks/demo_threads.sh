#!/usr/bin/env bash
# Seconds per training step of the demo's two stages with trainer.num_threads=1 and with torch's default
# (one thread per core), on an idle machine and with a busy loop on one core. Run it alone:
#     bash benchmarks/demo_threads.sh            # ~25 min on 2 cores; table in docs/demo.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=outputs/benchmarks/demo_threads
rm -rf "$RUNS"
quiet="trainer.eval_every=100000 trainer.sample_every=100000 trainer.checkpoint_every=100000 trainer.progress_bar=false"
$PY scripts/train_tokenizer.py experiment=tokenizer_demo trainer.max_steps=2 hydra.run.dir=$RUNS/tokenizer > /dev/null
echo "| stage | load | num_threads | s/step |"
echo "|---|---|---|---:|"
for load in idle busy; do
  for threads in 1 null; do
    busy=""
    if [ $load = busy ]; then python3 -c 'while True: pass' & busy=$!; fi
    $PY scripts/train_tokenizer.py experiment=tokenizer_demo trainer.max_steps=101 trainer.log_every=100 \
      trainer.num_threads=$threads $quiet hydra.run.dir=$RUNS/tok_${load}_${threads} > /dev/null
    $PY scripts/train_gpt.py experiment=gpt_demo checkpoint_vae=$RUNS/tokenizer/checkpoints/last \
      trainer.max_steps=201 trainer.log_every=200 trainer.num_threads=$threads $quiet \
      hydra.run.dir=$RUNS/gpt_${load}_${threads} > /dev/null
    if [ -n "$busy" ]; then kill $busy; fi
    for stage in tok gpt; do
      python3 - "$stage" "$load" "$threads" "$RUNS/${stage}_${load}_${threads}/metrics.jsonl" <<'PY'
import json, sys
stage, load, threads, path = sys.argv[1:]
rows = [json.loads(line) for line in open(path) if '"train/lr"' in line]  # the first and last logged step
first, last = rows[0], rows[-1]
name = {"tok": "tokenizer", "gpt": "gpt"}[stage]
print(f"| {name} | {load} | {threads} | {(last['time'] - first['time']) / (last['step'] - first['step']):.3f} |")
PY
    done
  done
done
