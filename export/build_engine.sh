#!/usr/bin/env bash
# Build a TensorRT engine with trtexec, using exactly the settings of `n3deploy build-engine`.
#
# usage: export/build_engine.sh MODEL_fp16.onnx -o MODEL.plan [n3deploy build-engine options...]
#   e.g. export/build_engine.sh model_fp16.onnx -o model.plan --max-shape 1x1x1080x1920 --timing-cache trt.cache
#
# The flags are not written here: `n3deploy build-engine --print-trtexec` renders them from the same
# EngineBuildSpec the Python API build uses (one source of truth). After trtexec succeeds, the plan's
# metadata (MODEL.plan.json: TensorRT version, GPU, profile, ONNX sha256) is recorded with
# `--metadata-only` when TensorRT's Python package is importable; without it n3deploy will refuse the
# plan until that command is run.
#
# Environment: TRTEXEC (default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec as in NVIDIA's
# TensorRT container), N3DEPLOY (default: n3deploy).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
if [[ $# -lt 1 ]]; then usage >&2; exit 2; fi
if [[ "$1" == "-h" || "$1" == "--help" ]]; then usage; exit 0; fi

N3DEPLOY=${N3DEPLOY:-n3deploy}
printf -v user_args ' %q' "$@"
if [[ -z "${TRTEXEC:-}" ]]; then
    if command -v trtexec >/dev/null 2>&1; then
        TRTEXEC=trtexec
    elif [[ -x /usr/src/tensorrt/bin/trtexec ]]; then
        TRTEXEC=/usr/src/tensorrt/bin/trtexec
    else
        echo "build_engine.sh: trtexec not found. It ships with NVIDIA's TensorRT (tarball bin/trtexec, the" >&2
        echo "  nvcr.io/nvidia/tensorrt container at /usr/src/tensorrt/bin/trtexec), not with pip; set TRTEXEC=/path/to/trtexec." >&2
        echo "  Without it, build with the Python API instead: $N3DEPLOY build-engine${user_args}" >&2
        exit 127
    fi
fi

args_file=$(mktemp)
trap 'rm -f "$args_file"' EXIT
# NUL-separated argv, so paths with spaces survive; a failing n3deploy stops the script (set -e).
"$N3DEPLOY" build-engine "$@" --print-trtexec --print-format nul --trtexec "$TRTEXEC" >"$args_file"
mapfile -d '' -t cmd <"$args_file"
if [[ ${#cmd[@]} -eq 0 ]]; then
    echo "build_engine.sh: n3deploy printed no trtexec command" >&2
    exit 1
fi

printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
"${cmd[@]}"

if "$N3DEPLOY" build-engine "$@" --metadata-only; then
    :
else
    echo "build_engine.sh: the plan was built, but its metadata was not recorded (see above). On a machine with" >&2
    echo "  TensorRT's Python package and this GPU, run: $N3DEPLOY build-engine${user_args} --metadata-only" >&2
    exit 3
fi
