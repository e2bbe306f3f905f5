#!/usr/bin/env bash
# The reference the ASR target is measured against: faster-whisper 1.2.1 (CTranslate2, int8,
# 2 threads, greedy) on the same CTranslate2 tiny.en files teddyflow loads, over the five
# LibriVox utterances of pocketsphinx-testdata, or the clips of DIR (a PocketSphinx
# `transcription` file or a `.txt` beside each WAV, as `teddyflow bench asr` reads them, e.g.
# a set written by `bench asr SENTENCES --save-clips DIR`). Prints RTF, mean ms per clip and
# WER (same normalization as models/src/wer.rs). Run it on a quiet machine, beside `make bench-asr`.
#   bash scripts/faster_whisper_reference.sh [DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.assets/venv-faster-whisper"
MODEL="$ROOT/.assets/models/whisper-tiny.en"
DATA="${1:-/usr/share/pocketsphinx/test/data/librivox}"
[ -d "$MODEL" ] || { echo "run scripts/setup.sh first ($MODEL missing)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet faster-whisper==1.2.1
fi
"$VENV/bin/python" - "$MODEL" "$DATA" <<'PY'
import re, sys, time, wave
from faster_whisper import WhisperModel

import json, os, tempfile
shipped, data = sys.argv[1], sys.argv[2]
# CTranslate2 wants vocabulary.json (tokens by id) beside model.bin; the package ships
# tokenizer.json only, so build it in a scratch folder that links the same weights.
model_dir = tempfile.mkdtemp(prefix="fw-tiny-en-")
for f in ("model.bin", "config.json", "tokenizer.json"):
    os.symlink(os.path.join(shipped, f), os.path.join(model_dir, f))
tok = json.load(open(os.path.join(shipped, "tokenizer.json")))
by_id = {i: t for t, i in tok["model"]["vocab"].items()}
by_id.update({a["id"]: a["content"] for a in tok.get("added_tokens", [])})
# Timestamp tokens are not listed in tokenizer.json: tiny.en's run from 50363 (<|0.00|>)
# to 51863.
size = max(max(by_id) + 1, 51864)
vocab = [by_id.get(i, f"<|{(i - 50363) * 0.02:.2f}|>") for i in range(size)]
json.dump(vocab, open(os.path.join(model_dir, "vocabulary.json"), "w"))
refs = {}
if os.path.exists(f"{data}/transcription"):
    for line in open(f"{data}/transcription"):
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if m:
            refs[m.group(2)] = m.group(1)
for f in os.listdir(data):
    if f.endswith(".wav") and os.path.exists(f"{data}/{f[:-4]}.txt"):
        refs[f[:-4]] = open(f"{data}/{f[:-4]}.txt").read().strip()

def norm(t):
    t = "".join(c if c.isalnum() or c == "'" else " " for c in t).lower()
    return [w.strip("'") for w in t.split() if w.strip("'")]

def errors(ref, hyp):
    r, h = norm(ref), norm(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)], len(r)

model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=2)
TIMESTAMPS = os.environ.get("FW_TIMESTAMPS") == "1"
def run(path):
    # Greedy, no timestamps: the decoding teddyflow does (FW_TIMESTAMPS=1 for the library default).
    segments, _ = model.transcribe(path, language="en", beam_size=1, vad_filter=False,
                                   without_timestamps=not TIMESTAMPS)
    return " ".join(s.text.strip() for s in segments)

ids = sorted(refs)
run(f"{data}/{ids[0]}.wav")  # warm-up, untimed
audio_s = compute_s = 0.0
errs = words = 0
for i in ids:
    path = f"{data}/{i}.wav"
    with wave.open(path) as w:
        audio_s += w.getnframes() / w.getframerate()
    t = time.perf_counter()
    hyp = run(path)
    compute_s += time.perf_counter() - t
    e, n = errors(refs[i], hyp)
    errs, words = errs + e, words + n
print(f"faster-whisper tiny.en int8, 2 threads, beam 1, timestamps {TIMESTAMPS}: {len(ids)} clips, {audio_s:.1f} s audio, "
      f"{compute_s:.2f} s compute, mean {1000 * compute_s / len(ids):.0f} ms/clip, RTF {compute_s / audio_s:.3f}, WER {100 * errs / words:.2f} %")
PY
