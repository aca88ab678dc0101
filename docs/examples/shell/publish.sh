#!/usr/bin/env bash
# Publish one job to hadis from the shell, wait for it, save the PNG (docs/backends.md explains
# each step; docs/jobs.md is the contract).
#
#   docs/examples/shell/publish.sh "a red bicycle" bike.png
#
# Publishes through RabbitMQ's management HTTP API (the rabbitmq_management plugin) with curl, or
# with rabbitmqadmin when PUBLISH_WITH=rabbitmqadmin; reads Redis with redis-cli; builds JSON with jq.
# Where the stack is: RABBITMQ_MANAGEMENT_URL (http://127.0.0.1:15672), RABBITMQ_USER and
# RABBITMQ_PASSWORD (guest/guest), RABBITMQ_VHOST (/), REDIS_URL (redis://127.0.0.1:6379/0),
# HADIS_NAMESPACE (hadis). TIMEOUT_S bounds the wait (120).
# Prints the job record as JSON. Exit code: 0 done, 1 failed or expired, 2 not finished in time,
# 3 the stack could not be reached, 64 usage.
set -euo pipefail

PROMPT=${1:-}
OUT=${2:-}
[ -n "$PROMPT" ] || { echo 'usage: publish.sh "PROMPT" [OUT.png]' >&2; exit 64; }
for tool in jq redis-cli "${PUBLISH_WITH:-curl}"; do
  command -v "$tool" >/dev/null || { echo "publish.sh needs $tool" >&2; exit 64; }
done

NS=${HADIS_NAMESPACE:-hadis}
MANAGEMENT_URL=${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}
USERNAME=${RABBITMQ_USER:-guest}
PASSWORD=${RABBITMQ_PASSWORD:-guest}
VHOST=${RABBITMQ_VHOST:-/}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
TIMEOUT_S=${TIMEOUT_S:-120}

# The Job (docs/job.schema.json): only `prompt` is required; job_id is the idempotency key.
JOB_ID=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
JOB=$(jq -cn --arg job_id "$JOB_ID" --arg prompt "$PROMPT" --argjson now "$(date +%s)" \
  '{job_id: $job_id, prompt: $prompt, submitted_at: $now, metadata: {source: "shell-example"}}')
PROPERTIES=$(jq -cn --arg id "$JOB_ID" '{delivery_mode: 2, content_type: "application/json", message_id: $id}')

# Persistent message, default exchange, routing key <ns>.requests. The HTTP API answers whether
# the message reached a queue ("routed"); it has no publisher confirms, so use it for operations
# and tests, and an AMQP client (docs/examples/node) in a service.
publish_with_curl() {
  local vhost body routed
  vhost=$(jq -rn --arg v "$VHOST" '$v | @uri')
  body=$(jq -cn --arg key "$NS.requests" --arg payload "$JOB" --argjson properties "$PROPERTIES" \
    '{properties: $properties, routing_key: $key, payload: $payload, payload_encoding: "string"}')
  routed=$(curl -fsS -u "$USERNAME:$PASSWORD" -H 'content-type: application/json' -d "$body" \
    "$MANAGEMENT_URL/api/exchanges/$vhost/amq.default/publish" | jq -r .routed) || return 3
  [ "$routed" = true ]
}

publish_with_rabbitmqadmin() {
  local answer
  answer=$(rabbitmqadmin -U "$MANAGEMENT_URL" -V "$VHOST" -u "$USERNAME" -p "$PASSWORD" publish \
    exchange=amq.default routing_key="$NS.requests" payload="$JOB" properties="$PROPERTIES") || return 3
  [ "$answer" = "Message published" ]
}

if ! "publish_with_${PUBLISH_WITH:-curl}"; then
  echo "could not publish to $NS.requests via $MANAGEMENT_URL: is the stack running?" >&2
  exit 3
fi

# Poll the record until it is terminal (a service would subscribe to <ns>:done:<job_id> instead).
redis() { redis-cli -u "$REDIS_URL" --no-auth-warning "$@"; }
deadline=$((SECONDS + TIMEOUT_S))
while :; do
  state=$(redis --raw HGET "$NS:job:$JOB_ID" state)
  case "$state" in done | failed | expired) break ;; esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    jq -cn --arg id "$JOB_ID" --arg t "$TIMEOUT_S" '{job_id: $id, error: "not finished within \($t) s"}'
    exit 2
  fi
  sleep 0.5
done

RECORD=$(redis --json HGETALL "$NS:job:$JOB_ID")
HISTORY=$(redis --raw LRANGE "$NS:job:$JOB_ID:history" 0 -1 | jq -cs .)
if [ "$state" = "done" ]; then
  OUT=${OUT:-$JOB_ID.png}
  # --raw ends its output with a newline that is not part of the PNG: drop it (GNU head).
  redis --raw GET "$NS:image:$JOB_ID" | head -c -1 >"$OUT"
  RECORD=$(jq -c --arg out "$OUT" '. + {saved_to: $out}' <<<"$RECORD")
fi
jq --argjson history "$HISTORY" '. + {history: $history}' <<<"$RECORD"
[ "$state" = "done" ]
