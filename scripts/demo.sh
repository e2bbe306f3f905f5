#!/usr/bin/env bash
# The demo: a local broker, the processor, a simulated fleet of toys; prints each
# transcript and metrics as they arrive, then stops everything it started.
#   CONVERSATIONS=3 UTTERANCES=3 RATE=1 WORKERS=1 bash scripts/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/target/release/teddyflow"
RUN="$ROOT/.assets/run"
mkdir -p "$RUN"
CONVERSATIONS="${CONVERSATIONS:-3}"
UTTERANCES="${UTTERANCES:-3}"
RATE="${RATE:-1}"
WORKERS="${WORKERS:-1}"
TOTAL=$((CONVERSATIONS * UTTERANCES))

# A fresh broker per demo keeps old topics out of the way.
bash scripts/broker.sh stop >/dev/null 2>&1 || true
eval "$(bash scripts/broker.sh start)"
echo "demo: broker at $BROKERS (log .assets/run/broker.log)"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash scripts/broker.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$BIN" run --config configs/teddyflow.toml --brokers "$BROKERS" --workers "$WORKERS" \
  --set engine.metrics_interval_ms=3000 2> "$RUN/processor.log" &
pids+=($!)
echo "demo: processor started with $WORKERS worker(s) (log .assets/run/processor.log)"

"$BIN" fleet --brokers "$BROKERS" --conversations "$CONVERSATIONS" --utterances "$UTTERANCES" --rate "$RATE" \
  | sed -u 's/^/fleet: /' &
pids+=($!)

echo "demo: waiting for $TOTAL replies…"
"$BIN" tail --brokers "$BROKERS" --topics teddy.responses,teddy.deadletter,teddy.alerts --responses "$TOTAL" --seconds 300
echo
echo "demo: latest metrics per worker:"
"$BIN" tail --brokers "$BROKERS" --topics teddy.metrics --seconds 4 | tail -n "$WORKERS"
kill -TERM "${pids[0]}" 2>/dev/null || true
wait "${pids[0]}" 2>/dev/null || true
echo "demo: processor stopped: $(grep -o 'worker stopped.*' "$RUN/processor.log" | tail -1)"
