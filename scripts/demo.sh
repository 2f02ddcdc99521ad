#!/usr/bin/env bash
# The embedded default, from a fresh clone: set up .venv, then deploy two SmolLM2 replicas on this
# machine with llama.cpp (no SLURM, no GPU), ask them a few questions, and stop cleanly.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup-env.sh"
exec "${SLURM_LLM_VENV:-$REPO/.venv}/bin/slurm-llm" demo "$@"
