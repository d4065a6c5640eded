#!/bin/sh
# migrator-mariadb: MariaDB whose data directory lives on a volume container's mount.
#   MARIADB_DATADIR   data directory (default /data/mysql); created and initialised when empty
#   MARIADB_DATABASE  database created on first start (default app)
#   MARIADB_USER      user created on first start with all rights on it and on databases named
#                     after it (app% : a scratch copy such as app_check) (default app)
#   MARIADB_PASSWORD  that user's password (from the secrets file through env_secrets); required
#   MARIADB_PORT      TCP port (default 3306)
# root logs in only over the socket as the container's root user (unix_socket), never over TCP.
# SIGTERM shuts the server down cleanly (mariadbd is exec'd as PID 1).
set -eu
datadir=${MARIADB_DATADIR:-/data/mysql}
db=${MARIADB_DATABASE:-app}
user=${MARIADB_USER:-app}
port=${MARIADB_PORT:-3306}
: "${MARIADB_PASSWORD:?migrator-mariadb: MARIADB_PASSWORD is not set}"
mkdir -p "$datadir" /run/mysqld
chown mysql:mysql "$datadir" /run/mysqld
cat > /etc/mysql/mariadb.conf.d/90-migrator.cnf <<CNF
[mariadbd]
datadir = $datadir
port = $port
bind-address = 0.0.0.0
socket = /run/mysqld/mysqld.sock
skip-name-resolve
innodb_buffer_pool_size = 64M
innodb_log_file_size = 48M
[client]
port = $port
socket = /run/mysqld/mysqld.sock
CNF
if [ ! -d "$datadir/mysql" ]; then
    echo "migrator-mariadb: initialising $datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db >/dev/null
    mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
    pid=$!
    i=0
    until mariadb-admin --socket=/run/mysqld/init.sock ping >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -lt 600 ] || { echo "migrator-mariadb: init server did not start" >&2; exit 1; }
        sleep 0.1
    done
    # The password goes through stdin, never argv.
    esc=$(printf '%s' "$MARIADB_PASSWORD" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g")
    mariadb --socket=/run/mysqld/init.sock <<SQL
DELETE FROM mysql.global_priv WHERE User = '';
CREATE DATABASE IF NOT EXISTS \`$db\`;
CREATE USER IF NOT EXISTS '$user'@'%' IDENTIFIED BY '$esc';
GRANT ALL ON \`$db%\`.* TO '$user'@'%';
GRANT SELECT, LOCK TABLES, SHOW VIEW, EVENT, TRIGGER, RELOAD, PROCESS ON *.* TO '$user'@'%';
FLUSH PRIVILEGES;
SQL
    mariadb-admin --socket=/run/mysqld/init.sock shutdown
    wait "$pid" || true
fi
echo "migrator-mariadb: serving $datadir on :$port"
exec mariadbd --user=mysql
