#!/bin/sh
# Start one process of a teddyflow timely cluster inside a StatefulSet pod.
# The process index is the pod ordinal (teddyflow-3 -> 3); the hostfile lists every
# process by the headless Service's stable DNS name, except this one, which binds on all
# interfaces (timely listens on its own line's address and connects to the others,
# retrying until they are up).
#   TEDDYFLOW_PROCESSES  cluster size (required; the StatefulSet's replicas)
#   TEDDYFLOW_BROKERS    Kafka bootstrap servers (required)
#   TEDDYFLOW_WORKERS    worker threads per process (default 1)
#   TEDDYFLOW_SERVICE    headless Service name (default teddyflow)
#   POD_NAMESPACE        from the downward API (default default)
#   TEDDYFLOW_CLUSTER_DOMAIN (cluster.local), TEDDYFLOW_TIMELY_PORT (2101),
#   TEDDYFLOW_HTTP_PORT (9464), TEDDYFLOW_CONFIG (/etc/teddyflow/teddyflow.toml),
#   TEDDYFLOW_HOSTFILE (/tmp/teddyflow-hosts), TEDDYFLOW_BIN (teddyflow)
# Extra arguments are passed on to `teddyflow run`.
set -eu
: "${TEDDYFLOW_PROCESSES:?set TEDDYFLOW_PROCESSES to the cluster size}"
: "${TEDDYFLOW_BROKERS:?set TEDDYFLOW_BROKERS}"
pod="${HOSTNAME:-$(hostname)}"
ordinal="${pod##*-}"
set_name="${pod%-*}"
case "$ordinal" in
  ''|*[!0-9]*) echo "entrypoint: no pod ordinal in hostname '$pod'" >&2; exit 1 ;;
esac
if [ "$ordinal" -ge "$TEDDYFLOW_PROCESSES" ]; then
  echo "entrypoint: pod $pod is beyond the cluster size $TEDDYFLOW_PROCESSES" >&2; exit 1
fi
service="${TEDDYFLOW_SERVICE:-teddyflow}"
domain="${POD_NAMESPACE:-default}.svc.${TEDDYFLOW_CLUSTER_DOMAIN:-cluster.local}"
port="${TEDDYFLOW_TIMELY_PORT:-2101}"
hostfile="${TEDDYFLOW_HOSTFILE:-/tmp/teddyflow-hosts}"
i=0
: > "$hostfile"
while [ "$i" -lt "$TEDDYFLOW_PROCESSES" ]; do
  if [ "$i" -eq "$ordinal" ]; then
    echo "0.0.0.0:$port" >> "$hostfile"
  else
    echo "$set_name-$i.$service.$domain:$port" >> "$hostfile"
  fi
  i=$((i + 1))
done
echo "entrypoint: process $ordinal of $TEDDYFLOW_PROCESSES, hostfile $hostfile" >&2
exec "${TEDDYFLOW_BIN:-teddyflow}" run \
  --config "${TEDDYFLOW_CONFIG:-/etc/teddyflow/teddyflow.toml}" \
  --brokers "$TEDDYFLOW_BROKERS" \
  --workers "${TEDDYFLOW_WORKERS:-1}" \
  -n "$TEDDYFLOW_PROCESSES" -p "$ordinal" -h "$hostfile" \
  --set "engine.http_addr=\"0.0.0.0:${TEDDYFLOW_HTTP_PORT:-9464}\"" \
  "$@"
