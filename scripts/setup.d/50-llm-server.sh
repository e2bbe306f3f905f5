# shellcheck shell=bash
# A real OpenAI-compatible LLM server for the `openai` reply backend's tests and bench
# (issue 13): llama.cpp's own HTTP server from the PyPI wheel xllamacpp (prebuilt CPU
# build), in $ASSETS/venv-llm-server, serving the SmolLM2 GGUF that 30-answering.sh
# installs. scripts/llm_server.py starts it. The processor itself never needs it.
# Sourced by scripts/setup.sh (helpers: log; vars: ASSETS PY). Idempotent.
# TEDDYFLOW_SKIP_TEST_TOOLS=1 skips it (the Docker image's build stage).

XLLAMACPP_VERSION=2026.10.11549

install_llm_server() {
  local venv="$ASSETS/venv-llm-server"
  "$venv/bin/python" -c "import importlib.metadata as m, sys; \
sys.exit(m.version('xllamacpp') != '$XLLAMACPP_VERSION')" 2>/dev/null && return
  log "installing xllamacpp $XLLAMACPP_VERSION (llama.cpp's server) into $venv"
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: \
    "xllamacpp==$XLLAMACPP_VERSION"
}

if [ "${TEDDYFLOW_SKIP_TEST_TOOLS:-0}" != 1 ]; then
  install_llm_server
fi
