#!/usr/bin/env bash
# `make run`: every service under `hadis serve all`, in the foreground until Ctrl-C, and beside it a local
# Prometheus when PROMETHEUS names one (the Makefile passes the `prometheus` on PATH; empty: none).
#
# With a Prometheus, the services serve metrics from HADIS_METRICS_PORT (9100 unless set) on, and
# Prometheus (127.0.0.1:PROMETHEUS_PORT, 9090) scrapes them with docker/prometheus/prometheus.yml written
# for those ports and rules.yml's recording rules and alerts (scripts/prometheus_local.py); its config,
# data and log go to PROMETHEUS_DIR (out/prometheus). It stops when the stack does. A port that is taken
# costs only the metrics: make run says so and serves without them. docs/observability.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
PROMETHEUS_DIR=${PROMETHEUS_DIR:-$ROOT/out/prometheus}
prometheus_pid=

say() { echo "make run: $*" >&2; }

stop_prometheus() {
    if [[ -n $prometheus_pid ]]; then
        kill "$prometheus_pid" 2>/dev/null || true
        wait "$prometheus_pid" 2>/dev/null || true
    fi
}

start_prometheus() {
    local had_port=${HADIS_METRICS_PORT:-} code=0
    export HADIS_METRICS_PORT=${HADIS_METRICS_PORT:-9100}
    mkdir -p "$PROMETHEUS_DIR"
    "$VENV/bin/python" "$ROOT/scripts/prometheus_local.py" --check-ports "$PROMETHEUS_DIR/prometheus.yml" || code=$?
    if ((code != 0)); then
        say "no Prometheus and no metrics this run (scripts/prometheus_local.py exited $code)"
        if [[ -z $had_port ]]; then unset HADIS_METRICS_PORT; fi
        return 0
    fi
    # In make run's process group: Ctrl-C (or a signal to the group) stops it with the services.
    "$PROMETHEUS" --config.file="$PROMETHEUS_DIR/prometheus.yml" --storage.tsdb.path="$PROMETHEUS_DIR/data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >>"$PROMETHEUS_DIR/prometheus.log" 2>&1 &
    prometheus_pid=$!
    trap stop_prometheus EXIT
    sleep 1
    if ! kill -0 "$prometheus_pid" 2>/dev/null; then
        say "Prometheus did not start (is 127.0.0.1:$PROMETHEUS_PORT taken?); its log: $PROMETHEUS_DIR/prometheus.log"
        prometheus_pid=
        return 0
    fi
    say "Prometheus on http://127.0.0.1:$PROMETHEUS_PORT (alerts: /alerts), scraping the services' metrics" \
        "from port $HADIS_METRICS_PORT on; its data in $PROMETHEUS_DIR"
}

if [[ -n ${PROMETHEUS:-} ]]; then
    start_prometheus
fi
"$VENV/bin/hadis" serve all
