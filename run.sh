#!/usr/bin/env bash
# simclr-mura experiment driver.
#
#   bash run.sh demo            synthetic MURA (one body part) -> TFDS build -> grid --preset demo for that
#                               part -> Grad-CAM maps of the 100% rows -> report + data exploration in
#                               WORK_DIR/report (prints index.html)
#   bash run.sh grid [--parts elbow,hand,shoulder] [--preset demo|cpu|gpu] [--data_dir D] [--model_root M]
#                               per part: SimCLR pretrain, fine-tune 1/10/100%, linear eval, DenseNet-169
#                               baseline 1/10/100%, all evaluated on test; finished runs are skipped and
#                               unfinished ones resumed (defaults: --preset gpu, WORK_DIR/tfds, WORK_DIR/grid;
#                               --dry_run lists the runs)
#   bash run.sh report [--model_root M] [--out R]   tables, figures and index.html of finished runs
#   bash run.sh test            install the test extra and run the whole test suite
#   bash run.sh synth [ARGS]    write a synthetic MURA-v1.1 tree (python -m tfds_mura.synthetic)
#   bash run.sh build [ARGS]    build the `mura` TFDS dataset from a MURA-v1.1 folder or zip
#
# Without an active virtualenv, a local one is created in .venv and the package installed into it
# (re-installed only when setup.py changes). Settings come from the environment:
#   WORK_DIR       where demo/synth/build/grid write            (default: ./work_dirs)
#   SCALE          synthetic scale for synth                    (default: 0.02, about 800 images)
#   DEMO_PART      the demo's body part                         (default: shoulder)
#   DEMO_SCALE     the demo's synthetic scale of that part      (default: 0.25, about 2,200 images)
#   SIGN_STRENGTH  how visible the demo's abnormal signs are    (default: 3; 1 = the usual synthetic data)
#   PYTHON         interpreter used to create .venv             (default: python3, must be >= 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
WORK_DIR="${WORK_DIR:-$ROOT/work_dirs}"
SCALE="${SCALE:-0.02}"
DEMO_PART="${DEMO_PART:-shoulder}"
DEMO_SCALE="${DEMO_SCALE:-0.25}"
SIGN_STRENGTH="${SIGN_STRENGTH:-3}"
# TensorFlow's C++ start-up notices: 2 hides INFO and WARNING (oneDNN), 3 also the ERROR
# "failed call to cuInit" of a machine without an NVIDIA driver (as simclr_mura/tf_env.py for run.py).
if [[ -e /proc/driver/nvidia/version ]]; then
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
else
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
fi

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
  local manual="$WORK_DIR/manual" data="$WORK_DIR/tfds" runs="$WORK_DIR/runs" out="$WORK_DIR/report"
  local settings="part=$DEMO_PART scale=$DEMO_SCALE sign_strength=$SIGN_STRENGTH seed=0"
  if [[ -f "$manual/MURA-v1.1/train_image_paths.csv" && "$(cat "$manual/.demo_settings" 2>/dev/null)" == "$settings" ]]; then
    say "reusing synthetic MURA in $manual ($settings)"
  else
    [[ -d "$manual/MURA-v1.1" ]] && say "$manual/MURA-v1.1 was not written by this demo's settings ($settings); replacing it"
    cmd_synth --out "$manual" --scale "$DEMO_SCALE" --parts "$DEMO_PART" --seed 0 \
      --sign_strength "$SIGN_STRENGTH" --overwrite
    echo "$settings" > "$manual/.demo_settings"
    # The builder would reuse a dataset built from an older tree, and the grid would skip runs
    # finished on it: rebuild the demo's dataset and keep older demo runs aside.
    rm -rf "$data/mura/$DEMO_PART"
    if [[ -d "$runs" ]]; then
      mv "$runs" "$runs.old-$(date +%Y%m%d-%H%M%S)"
      say "older demo runs moved to $runs.old-*"
    fi
  fi
  cmd_build --manual_dir "$manual" --data_dir "$data" --config "$DEMO_PART"
  cmd_grid --preset demo --parts "$DEMO_PART" --data_dir "$data" --model_root "$runs"
  # Where the 100% models look, and how often their maps peak on the sign the generator drew.
  local run signs=()
  # A tree written before the generator recorded its signs has no signs file: maps only.
  [[ -f "$manual/synthetic_signs.csv" ]] && signs=(--signs "$manual/synthetic_signs.csv")
  for run in "$runs/finetune_100pct_$DEMO_PART" "$runs/baseline_100pct_$DEMO_PART"; do
    say "class activation maps: python -m simclr_mura.gradcam --run $run ${signs[*]}"
    python -m simclr_mura.gradcam --run "$run" "${signs[@]}"
  done
  say "report and data exploration (synthetic data): $out"
  python -m simclr_mura.study.report --model_root "$runs" --out "$out" --data_dir "$data"
  python -m simclr_mura.study.explore --data_dir "$data" --out "$out" --dataset "mura/$DEMO_PART"
  say "report: $out/index.html"
}

cmd_grid() {
  ensure_env test
  say "experiment grid: python -m simclr_mura.study.grid $*"
  # Defaults first: flags given on the command line come later and win.
  python -m simclr_mura.study.grid --data_dir "$WORK_DIR/tfds" --model_root "$WORK_DIR/grid" "$@"
}

cmd_report() {
  ensure_env test
  python -m simclr_mura.study.report --model_root "$WORK_DIR/grid" --out "$WORK_DIR/report" "$@"
}

cmd_test() {
  ensure_env test
  say "running the test suite: python -m pytest $*"
  python -m pytest "$@"
}

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    demo) cmd_demo "$@" ;;
    grid) cmd_grid "$@" ;;
    report) cmd_report "$@" ;;
    test) cmd_test "$@" ;;
    synth) cmd_synth "$@" ;;
    build) cmd_build "$@" ;;
    -h|--help|help) usage ;;
    "") usage; die "no command given" ;;
    *) usage; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
