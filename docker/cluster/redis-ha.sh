#!/bin/sh
# compose.cluster.yaml: starts one Redis server (`node`) or one Sentinel (`sentinel`) of the
# replicated store, mounted read-only into the redis image and run as `sh /cluster/redis-ha.sh MODE`.
#
# Every start writes the configuration afresh from the environment (a changed password takes effect
# on a restart; nothing stale is carried over) and takes its role from the others: the primary is
# whichever server the running Sentinels name, else a server that says it is a primary, else the
# first start's (REDIS_REPLICAOF for a node, itself when empty; REDIS_PRIMARY for a Sentinel). So a
# primary that died and came back after a failover rejoins as a replica of the new one instead of
# starting as a second primary, and a Sentinel started after a failover monitors the primary that
# is, not the one compose named.
#
# Environment: REDIS_PASSWORD, REDIS_NODES and REDIS_SENTINELS (host names, space-separated),
# REDIS_SENTINEL_MASTER (the name the Sentinels know the primary by); a node also REDIS_MAXMEMORY and
# REDIS_REPLICAOF; a Sentinel REDIS_PRIMARY, SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS,
# SENTINEL_FAILOVER_TIMEOUT_MS and SENTINEL_DIR (where it writes its file; /sentinel). Host names
# must not change: Sentinels and replicas announce them (resolve-hostnames, announce-hostnames,
# replica-announce-ip), not the addresses a re-created container does not keep.
set -eu

mode=${1:?usage: redis-ha.sh node|sentinel}
self=$(hostname)
: "${REDIS_PASSWORD:?}" "${REDIS_NODES:?}" "${REDIS_SENTINELS:?}"
master_name=${REDIS_SENTINEL_MASTER:-hadis}

log() { echo "redis-ha ($mode $self): $*" >&2; }

# A short question to another server; nothing (not an error) when it does not answer.
ask() { timeout 3 redis-cli "$@" 2>/dev/null || true; }

# The primary now, or $1 when no one can tell (a first start, or everything restarted at once).
current_primary() {
    for sentinel in $REDIS_SENTINELS; do
        [ "$sentinel" = "$self" ] && continue
        host=$(ask -h "$sentinel" -p 26379 --raw SENTINEL get-master-addr-by-name "$master_name" | head -n 1)
        if [ -n "$host" ]; then
            log "primary $host, as $sentinel sees it"
            echo "$host"
            return
        fi
    done
    for node in $REDIS_NODES; do
        [ "$node" = "$self" ] && continue
        if REDISCLI_AUTH=$REDIS_PASSWORD ask -h "$node" INFO replication | grep -q '^role:master'; then
            log "primary $node, as it says itself (no Sentinel answered)"
            echo "$node"
            return
        fi
    done
    log "primary $1, the first start's (no Sentinel or primary answered)"
    echo "$1"
}

start_node() {
    primary=$(current_primary "${REDIS_REPLICAOF:-$self}")
    # As compose.yaml's single server: append-only file with an fsync before every reply, a memory
    # bound that never evicts. Every node can become the primary or a replica, so each gets both
    # passwords. A primary takes writes only while a replica follows it (min-replicas-to-write 1):
    # when two Sentinels promoted two replicas one after the other (a loaded machine), the first
    # took 11 s of writes and then resynced from the second, flushing them (jobs without a record,
    # tests/faults/test_cluster.py, 2026-12-07). Refused instead (NOREPLICAS), the store asks the
    # Sentinels again and retries (shared/store/base.py: without_replicas).
    set -- --appendonly yes --appendfsync always \
        --maxmemory "${REDIS_MAXMEMORY:-2gb}" --maxmemory-policy noeviction \
        --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" \
        --replica-announce-ip "$self" \
        --min-replicas-to-write 1 --min-replicas-max-lag 10
    if [ "$primary" != "$self" ]; then
        set -- "$@" --replicaof "$primary" 6379
    fi
    exec redis-server "$@"
}

start_sentinel() {
    primary=$(current_primary "${REDIS_PRIMARY:?}")
    # Sentinel rewrites its file (the primary after a failover, the other Sentinels and replicas it
    # met): this container's own copy, in its own writable directory.
    dir=${SENTINEL_DIR:-/sentinel}
    conf=$dir/sentinel.conf
    mkdir -p "$dir"
    cat > "$conf" <<EOF
port 26379
dir $dir
protected-mode no
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $self
sentinel announce-port 26379
sentinel monitor $master_name $primary 6379 ${SENTINEL_QUORUM:-2}
sentinel auth-pass $master_name $REDIS_PASSWORD
sentinel down-after-milliseconds $master_name ${SENTINEL_DOWN_AFTER_MS:-5000}
sentinel failover-timeout $master_name ${SENTINEL_FAILOVER_TIMEOUT_MS:-60000}
sentinel parallel-syncs $master_name 1
EOF
    chmod 600 "$conf"  # it holds the password
    exec redis-server "$conf" --sentinel
}

case $mode in
    node) start_node ;;
    sentinel) start_sentinel ;;
    *) echo "usage: redis-ha.sh node|sentinel" >&2; exit 2 ;;
esac
