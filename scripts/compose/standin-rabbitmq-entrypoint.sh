#!/bin/sh
# TEST HARNESS ONLY: the entrypoint of the RabbitMQ stand-in (Debian's rabbitmq-server). Does what
# the official image does with its environment: default user and password, listeners on all interfaces.
set -e
cat > /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.default = 5672
management.tcp.port = 15672
management.tcp.ip = 0.0.0.0
loopback_users = none
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
CONF
rm -f /etc/rabbitmq/rabbitmq-env.conf
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
exec /usr/sbin/rabbitmq-server
