# shellcheck shell=bash
# Sourced by the benchmark scripts that train: train DIR SCRIPT ARGS... runs scripts/SCRIPT with $PY, fresh or
# resumed from DIR's last checkpoint (a run that was stopped), and is skipped once DIR/done exists.
train() {
  local dir=$1 script=$2
  shift 2
  [ -e "$dir/done" ] && return
  local resume=()
  [ -e "$dir/checkpoints/last/config.json" ] && resume=(resume=true)
  "$PY" "scripts/$script" "$@" "${resume[@]}" hydra.run.dir="$dir" && touch "$dir/done"
}
