#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server on a loopback port and prints its DSN.
#
#   DSN=$(tools/start_test_postgres.sh)        start; prints postgresql://postgres@127.0.0.1:PORT/postgres
#   tools/start_test_postgres.sh --stop "$DSN"  stop that server and delete its folder
#
# The PostgreSQL server programs come from Debian's `postgresql` package and PostGIS
# (for the archive's footprints) from `postgresql-MAJOR-postgis-3` of the server's
# major version; when either is missing and this runs as root with apt-get available,
# it is installed (CI runs as root on a Debian machine that reaches Debian's package
# registry). Without PostGIS the server still starts, with a warning on stderr, so that
# everything but the footprints can be tested; `CREATE EXTENSION postgis` then fails.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
# the package creates. The cluster lives in /tmp/rs_hashing_pg.PORT (data, socket,
# log), listens on 127.0.0.1 only, trusts local connections, and does not fsync: it is
# for tests and benchmarks, never for data that matters.
#
# Exit status: 0 with the DSN on stdout; non-zero with the reason on stderr.
set -euo pipefail

ROOT="${RS_HASHING_PG_ROOT:-/tmp}"

die() {
    echo "start_test_postgres: $*" >&2
    exit 1
}

run_as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

find_server_bin() {
    local candidate
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    # Debian keeps the server programs off PATH, one folder per major version.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_server() {
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and this is not root (apt-get install -y postgresql)"
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and there is no apt-get"
    echo "start_test_postgres: installing Debian's postgresql package" >&2
    # One installer at a time: parallel test workers may all get here.
    (
        flock -w 600 9 || die "another PostgreSQL install holds the lock"
        if ! find_server_bin >/dev/null; then
            apt_install postgresql || {
                apt-get update -q >&2 && apt_install postgresql
            } || die "apt-get install postgresql failed"
        fi
    ) 9>/tmp/rs_hashing_pg_install.lock
}

apt_install() {
    # Waits for another apt/dpkg run (not only for ours) instead of failing at once.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 "$@" >&2
}

# The folder holding the extension control files of the server in $1 (a bin folder).
extension_dir() {
    local sharedir
    if [ -x "$1/pg_config" ] && sharedir="$("$1/pg_config" --sharedir 2>/dev/null)"; then
        echo "$sharedir/extension"
    else
        echo "/usr/share/postgresql/$(server_major "$1")/extension"
    fi
}

server_major() {
    # `postgres -V` prints e.g. "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
    "$1/postgres" -V | awk '{ split($3, version, "."); print version[1] }'
}

# Installs PostGIS for the server in $1 when it is missing; returns non-zero (after a
# warning) when it cannot, and the caller starts the server anyway.
ensure_postgis() {
    local bin="$1" major package
    [ -f "$(extension_dir "$bin")/postgis.control" ] && return 0
    major="$(server_major "$bin")"
    package="postgresql-$major-postgis-3"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "start_test_postgres: warning: PostGIS is not installed and this cannot install it (as root: apt-get install $package)" >&2
        return 1
    fi
    echo "start_test_postgres: installing Debian's $package package" >&2
    (
        flock -w 900 9 || { echo "start_test_postgres: another install holds the lock" >&2; exit 1; }
        if [ ! -f "$(extension_dir "$bin")/postgis.control" ]; then
            # Recommends are command-line loaders (shp2pgsql, ...): not needed here.
            apt_install --no-install-recommends "$package" \
                || { apt-get update -q >&2 && apt_install --no-install-recommends "$package"; }
        fi
    ) 9>/tmp/rs_hashing_pg_install.lock
    if [ ! -f "$(extension_dir "$bin")/postgis.control" ]; then
        echo "start_test_postgres: warning: apt-get install $package failed; starting without PostGIS" >&2
        return 1
    fi
}

stop_server() {
    local port="${1##*:}"
    port="${port%%/*}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "--stop needs the DSN printed at start, got '$1'"
    local dir="$ROOT/rs_hashing_pg.$port"
    [ -d "$dir" ] || die "no server folder $dir"
    local bin
    bin="$(find_server_bin)" || die "pg_ctl not found"
    run_as_server_user "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

if [ "${1:-}" = "--stop" ]; then
    [ $# -eq 2 ] || die "usage: $0 --stop DSN"
    stop_server "$2"
    exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [--stop DSN]"

BIN="$(find_server_bin)" || { install_server; BIN="$(find_server_bin)" || die "PostgreSQL server programs not found after install"; }
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server as"
fi
ensure_postgis "$BIN" || true

for attempt in 1 2 3 4 5; do
    # A free loopback port (the kernel picks it); a race with another process is
    # caught by pg_ctl failing to start, and then another port is tried.
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 30000)))"
    DIR="$ROOT/rs_hashing_pg.$PORT"
    mkdir -p "$DIR" || die "cannot create $DIR"
    chmod 755 "$DIR"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$DIR"
    fi
    if ! run_as_server_user "$BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        rm -rf "$DIR"
        die "initdb failed"
    fi
    if run_as_server_user "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50" \
        start >/dev/null 2>&1; then
        echo "postgresql://postgres@127.0.0.1:$PORT/postgres"
        exit 0
    fi
    tail -n 5 "$DIR/server.log" >&2 2>/dev/null || true
    rm -rf "$DIR"
done
die "the server did not start (5 ports tried)"
