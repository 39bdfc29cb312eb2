#!/usr/bin/env bash
# simclr-mura experiment driver.
#
#   bash run.sh demo            synthetic MURA -> TFDS build -> SimCLR pretrain -> fine-tune at 1/10/100%
#                               -> DenseNet-169 baseline at 1/10/100% -> results table
#   bash run.sh test            install the test extra and run the whole test suite
#   bash run.sh synth [ARGS]    write a synthetic MURA-v1.1 tree (python -m tfds_mura.synthetic)
#   bash run.sh build [ARGS]    build the `mura` TFDS dataset from a MURA-v1.1 folder or zip
#
# Without an active virtualenv, a local one is created in .venv and the package installed into it
# (re-installed only when setup.py changes). Settings come from the environment:
#   WORK_DIR   where demo/synth/build write           (default: ./work_dirs)
#   SCALE      synthetic scale for demo/synth         (default: 0.02, about 800 images)
#   PYTHON     interpreter used to create .venv        (default: python3, must be >= 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
WORK_DIR="${WORK_DIR:-$ROOT/work_dirs}"
SCALE="${SCALE:-0.02}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

# Activate (or create) the environment and install the package with the given extras.
ensure_env() {
  local extras="$1"
  if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    if [[ ! -x .venv/bin/python ]]; then
      local py="${PYTHON:-python3}"
      command -v "$py" >/dev/null || die "$py not found; install Python >= 3.11 or set PYTHON=/path/to/python3.11"
      "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is $("$py" -V 2>&1); simclr-mura needs Python >= 3.11 (set PYTHON=...)"
      say "creating virtualenv .venv with $("$py" -V 2>&1)"
      "$py" -m venv .venv
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
  fi
  local stamp="$VIRTUAL_ENV/.simclr_mura_installed"
  local want
  want="$(sha1sum < setup.py | cut -c1-12)-[$extras]-$ROOT"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    say "installing simclr-mura[$extras] into $VIRTUAL_ENV (first run downloads TensorFlow, ~600 MB)"
    local log="$VIRTUAL_ENV/simclr_mura_install.log"
    { python -m pip install --upgrade pip && python -m pip install -e ".[$extras]"; } >"$log" 2>&1 \
      || { tail -n 25 "$log" >&2; die "pip install failed; full log: $log"; }
    echo "$want" > "$stamp"
  fi
}

cmd_synth() {
  ensure_env test
  local out="$WORK_DIR/manual"
  if [[ $# -eq 0 ]]; then
    set -- --out "$out" --scale "$SCALE"
  fi
  say "writing synthetic MURA-v1.1: python -m tfds_mura.synthetic $*"
  python -m tfds_mura.synthetic "$@"
}

cmd_build() {
  ensure_env test
  if [[ $# -eq 0 ]]; then
    set -- --manual_dir "$WORK_DIR/manual" --data_dir "$WORK_DIR/tfds"
  fi
  say "building the mura TFDS dataset: python -m tfds_mura.build $*"
  python -m tfds_mura.build "$@"
}

cmd_demo() {
  ensure_env test
  if [[ -f "$WORK_DIR/manual/MURA-v1.1/train_image_paths.csv" ]]; then
    say "reusing synthetic MURA in $WORK_DIR/manual"
  else
    cmd_synth --out "$WORK_DIR/manual" --scale "$SCALE" --seed 0
  fi
  cmd_build --manual_dir "$WORK_DIR/manual" --data_dir "$WORK_DIR/tfds"
  local runs="$WORK_DIR/runs"
  # The flagfiles name work_dirs/ paths; the overrides keep WORK_DIR working.
  local experiment args
  for experiment in demo_pretrain demo_finetune_1pct demo_finetune_10pct demo_finetune_100pct \
      demo_baseline_1pct demo_baseline_10pct demo_baseline_100pct; do
    args=(--flagfile="flags/$experiment.cfg" --data_dir="$WORK_DIR/tfds" --model_dir="$runs/$experiment")
    [[ $experiment == demo_finetune_* ]] && args+=(--checkpoint="$runs/demo_pretrain")
    say "$experiment: python run.py ${args[*]}"
    python run.py "${args[@]}"
  done
  say "results (synthetic data; python -m simclr_mura.report --model_root $runs --out $WORK_DIR/report)"
  python -m simclr_mura.report --model_root "$runs" --out "$WORK_DIR/report"
}

cmd_test() {
  ensure_env test
  say "running the test suite: python -m pytest $*"
  python -m pytest "$@"
}

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    demo) cmd_demo "$@" ;;
    test) cmd_test "$@" ;;
    synth) cmd_synth "$@" ;;
    build) cmd_build "$@" ;;
    -h|--help|help) usage ;;
    "") usage; die "no command given" ;;
    *) usage; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
