#!/usr/bin/env bash
# Make sure RabbitMQ (5672) and Redis (6379) answer on 127.0.0.1: start local servers when
# none is reachable, installing Debian's packages first if they are missing.
# Skip all of it with HADIS_SKIP_SERVICES=1 (your own broker and store in HADIS_AMQP_URL / HADIS_REDIS_URL).
set -euo pipefail
[ "${HADIS_SKIP_SERVICES:-0}" = "1" ] && exit 0

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_if_missing() {  # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 ..."
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

wait_for() {  # port name seconds
  for _ in $(seq 1 "$3"); do reachable "$1" && return 0; sleep 1; done
  echo "error: $2 did not come up on 127.0.0.1:$1 within $3 s" >&2
  return 1
}

if ! reachable 6379; then
  install_if_missing redis-server redis-server
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/hadis-redis.log
  wait_for 6379 redis 30
fi

if ! reachable 5672; then
  install_if_missing rabbitmq-server rabbitmq-server
  echo "starting rabbitmq-server on 127.0.0.1:5672"
  as_root rabbitmq-server -detached
  wait_for 5672 rabbitmq 90
fi

# The management API (15672) serves the shell example of docs/backends.md; jq reads its answers.
if ! reachable 15672 && command -v rabbitmq-plugins >/dev/null 2>&1; then
  as_root rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null || echo "warning: management plugin not enabled"
  wait_for 15672 rabbitmq-management 60 || true
fi
install_if_missing jq jq || echo "warning: jq not installed (the shell example's test will skip)"

# The broker's bound on a message's size: 128 KiB, as compose sets it (docker/rabbitmq-limits.conf;
# shared/bus/topology.py: BROKER_MAX_MESSAGE_BYTES), not RabbitMQ's default of 128 MiB. Set at run time on the
# local node, whether found running or started above: it lasts until that node restarts (stop_app and
# start_app keep it), and every `make run` / `make test` sets it again. A broker rabbitmqctl cannot
# reach or may not change (another host, a container, no root) keeps its own bound: a warning, and
# tests/hostile says which of its checks it skipped.
BROKER_MAX_MESSAGE_BYTES=131072
if command -v rabbitmqctl >/dev/null 2>&1 && as_root timeout 60 rabbitmqctl -q eval \
    "application:set_env(rabbit, max_message_size, $BROKER_MAX_MESSAGE_BYTES)." >/dev/null 2>&1; then
  echo "RabbitMQ max_message_size: $BROKER_MAX_MESSAGE_BYTES bytes"
else
  echo "warning: RabbitMQ's max_message_size not set to $BROKER_MAX_MESSAGE_BYTES (rabbitmqctl missing or refused)" >&2
fi
