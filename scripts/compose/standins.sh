#!/usr/bin/env bash
# TEST HARNESS ONLY: stand-ins for the upstream base images, for machines that cannot pull them.
# Users pull the real images (rabbitmq, redis, python, nvidia/cuda, uv); this script builds, from
# Debian bookworm packages (mmdebstrap) and PyPI's uv wheel, images tagged with the same names so
# compose.yaml and docker/Dockerfile run unchanged. An image that is present (pulled, or a stand-in
# from an earlier run) is kept; one that can be pulled is pulled; only the rest are built.
#
#   scripts/compose/standins.sh        # needs root, docker, mmdebstrap; caches in $CACHE
set -euo pipefail

CACHE=${HADIS_COMPOSE_CACHE:-/var/cache/hadis-compose-test}
PYTHON_SRC=${HADIS_STANDIN_PYTHON:-/root/.pyenv/versions/3.11.7}  # >= 3.11.3: the lock needs it
UV_VERSION=0.9.26
RABBITMQ=rabbitmq:3.13.7-management
REDIS=redis:7.4.2-alpine
PYTHON=python:3.11.14-slim-bookworm
CUDA=nvidia/cuda:13.0.2-base-ubuntu24.04
UV=ghcr.io/astral-sh/uv:$UV_VERSION
LABEL=org.hadis.test-standin=true
PYLIBS=ca-certificates,passwd,libssl3,libffi8,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libreadline8,libncursesw6,libuuid1,libgdbm6,libexpat1

log() { echo "standins: $*" >&2; }

# True when the image is here, or could be pulled (then it is).
available() {
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    timeout 60 docker pull -q "$1" >/dev/null 2>&1
}

# mmdebstrap a minbase bookworm with extra packages and hooks into $CACHE/$1.tar (cached).
rootfs() {
    local name=$1 include=$2; shift 2
    local tar=$CACHE/$name.tar
    if [[ ! -s $tar ]]; then
        log "mmdebstrap $name ($include)"
        mmdebstrap --quiet --variant=minbase --include="$include" \
            --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/usr/share/doc "$1"/usr/share/man' \
            "$@" bookworm "$CACHE/$name.partial.tar" && mv "$CACHE/$name.partial.tar" "$tar"
    fi
    echo "$tar"
}

# The Python >= 3.11.3 a stand-in runs: a local build copied into /usr/local (Debian ships 3.11.2).
python_hook() {
    echo "--customize-hook=tar -C $PYTHON_SRC --exclude=lib/python3.11/test --exclude='*/__pycache__' --exclude=lib/python3.11/site-packages -cf - . | tar -C \"\$1\"/usr/local -xf - && mkdir -p \"\$1\"/usr/local/lib/python3.11/site-packages && chroot \"\$1\" ldconfig && cp /etc/ssl/certs/ca-certificates.crt \"\$1\"/etc/ssl/certs/ca-certificates.crt"
}

build_rabbitmq() {
    local tar
    tar=$(rootfs rabbitmq rabbitmq-server,ca-certificates \
        --customize-hook='echo "[rabbitmq_management]." > "$1"/etc/rabbitmq/enabled_plugins' \
        --customize-hook="cp $(dirname "$0")/standin-rabbitmq-entrypoint.sh \"\$1\"/usr/local/bin/docker-entrypoint.sh && chmod 755 \"\$1\"/usr/local/bin/docker-entrypoint.sh")
    docker import --change "LABEL $LABEL" --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        --change 'EXPOSE 5672 15672' "$tar" "$RABBITMQ" >/dev/null
}

build_redis() {
    local tar
    tar=$(rootfs redis redis-server --customize-hook='mkdir -p "$1"/data')
    docker import --change "LABEL $LABEL" --change 'WORKDIR /data' --change 'CMD ["redis-server"]' \
        "$tar" "$REDIS" >/dev/null
}

build_python() {
    local tar
    tar=$(rootfs python "$PYLIBS" "$(python_hook)")
    docker import --change "LABEL $LABEL" --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' "$tar" "$PYTHON" >/dev/null
}

# The CUDA base has no Python; the Dockerfile's `uv python install` would download one (GitHub is not
# reachable here), so the stand-in carries it where uv keeps its managed Pythons: the harness then
# builds with PYTHON_VERSION set to this one's version.
build_cuda() {
    local tar version
    version=$("$PYTHON_SRC/bin/python3" -c 'import platform; print(platform.python_version())')
    tar=$(rootfs cuda "$PYLIBS" "$(python_hook)" \
        --customize-hook="mkdir -p \"\$1\"/opt/python && cp -a \"\$1\"/usr/local \"\$1\"/opt/python/cpython-$version-linux-x86_64-gnu")
    docker import --change "LABEL $LABEL" --change "LABEL org.hadis.test-standin-python=$version" \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' "$tar" "$CUDA" >/dev/null
}

build_uv() {
    local dir=$CACHE/uv-$UV_VERSION
    if [[ ! -x $dir/root/uv ]]; then
        rm -rf "$dir" && mkdir -p "$dir/root"
        python3 -m pip download --quiet --no-deps --only-binary=:all: "uv==$UV_VERSION" -d "$dir"
        python3 -m zipfile -e "$dir"/uv-*.whl "$dir/wheel"
        install -m 755 "$dir/wheel/uv-$UV_VERSION.data/scripts/uv" "$dir/root/uv"
    fi
    tar -C "$dir/root" -cf - uv | docker import --change "LABEL $LABEL" - "$UV" >/dev/null
}

main() {
    mkdir -p "$CACHE"
    local image kind
    for kind in rabbitmq redis python cuda uv; do
        case $kind in
            rabbitmq) image=$RABBITMQ ;; redis) image=$REDIS ;; python) image=$PYTHON ;;
            cuda) image=$CUDA ;; uv) image=$UV ;;
        esac
        if available "$image"; then
            log "$image: present"
        else
            log "$image: cannot be pulled, building a test stand-in"
            "build_$kind"
        fi
    done
}

main "$@"
