#!/usr/bin/env bash
# Start or stop the local Tansu broker (Apache-Kafka-compatible, memory storage).
#   scripts/broker.sh start   -> prints the bootstrap address; writes .assets/run/broker.env
#   scripts/broker.sh stop    -> stops it by PID
#   scripts/broker.sh status
# Tansu is for local runs and tests; point `kafka.brokers` at any Kafka in production.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="${TEDDYFLOW_ASSETS:-$ROOT/.assets}"
RUN="$ASSETS/run"
TANSU="${TANSU_BIN:-$ASSETS/bin/tansu}"
mkdir -p "$RUN"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -f "$RUN/broker.pid" ] && kill -0 "$(cat "$RUN/broker.pid")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if alive; then cat "$RUN/broker.env"; exit 0; fi
    [ -x "$TANSU" ] || { echo "broker: $TANSU missing; run scripts/setup.sh" >&2; exit 1; }
    port="${BROKER_PORT:-$(free_port)}"
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://tansu/" > "$RUN/broker.log" 2>&1 &
    echo $! > "$RUN/broker.pid"
    for _ in $(seq 1 100); do
      if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
        echo "BROKERS=127.0.0.1:$port" > "$RUN/broker.env"
        echo "BROKERS=127.0.0.1:$port"
        exit 0
      fi
      sleep 0.1
    done
    echo "broker: did not start; see $RUN/broker.log" >&2; exit 1 ;;
  stop)
    if alive; then kill "$(cat "$RUN/broker.pid")"; fi
    rm -f "$RUN/broker.pid" "$RUN/broker.env" ;;
  status)
    if alive; then cat "$RUN/broker.env"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
