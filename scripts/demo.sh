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

DASH_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
"$BIN" dashboard --brokers "$BROKERS" --listen "127.0.0.1:$DASH_PORT" 2> "$RUN/dashboard.log" &
pids+=($!)
echo "demo: live dashboard at http://127.0.0.1:$DASH_PORT/ (open it in a browser while the demo runs)"

"$BIN" fleet --brokers "$BROKERS" --conversations "$CONVERSATIONS" --utterances "$UTTERANCES" --rate "$RATE" \
  | sed -u 's/^/fleet: /' &
pids+=($!)

echo "demo: waiting for $TOTAL replies…"
"$BIN" tail --brokers "$BROKERS" --topics teddy.responses,teddy.deadletter,teddy.alerts --responses "$TOTAL" --seconds 300
echo
# The last replies reach a metrics snapshot within one interval (3 s here).
sleep 4
echo "demo: totals over the run (the dashboard's /state; p50 = count-weighted mean of the intervals' p50s, p95 = the highest interval p95):"
python3 - "$DASH_PORT" <<'PY' || echo "demo: the dashboard did not answer; see .assets/run/dashboard.log"
import json, sys, urllib.request
v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/state", timeout=5))
print(f"  answered {v['utterances_done']}, dead letters {v['deadletters']}, alerts {v['alerts']}, "
      f"replies replaced {v['replies_replaced']}")
for s in v["run_stages"]:
    print(f"  {s['stage']:<21} n={s['count']:<4} p50 {s['p50_ms']:7.0f} ms   p95 {s['p95_ms']:7.0f} ms")
PY
kill -TERM "${pids[0]}" 2>/dev/null || true
wait "${pids[0]}" 2>/dev/null || true
echo "demo: processor stopped: $(grep -o 'worker stopped.*' "$RUN/processor.log" | tail -1)"
