# Sourced by .ci/run (or by hand: `source .ci/postgres.sh && start_postgres`): starts a
# throwaway Postgres on 127.0.0.1 and exports PORTIA_TEST_PG_URL for the tests. The
# server and its data directory go away when the shell exits, whatever happens.

# The directory of the Debian package's binaries, or the one on PATH.
find_pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
    fi
}

# A TCP port nobody listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

stop_postgres() {
    if [ -n "${PG_DATA:-}" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    [ -n "${PG_TMP:-}" ] && rm -rf "$PG_TMP"
}

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A self-signed certificate for the host name localhost, so the TLS tests can check
# sslmode=require and verify-full (they skip when PORTIA_TEST_PG_CA is unset).
make_certificate() {
    command -v openssl >/dev/null 2>&1 || return 1
    (
        set -e
        cd "$PG_TMP"
        # A certificate authority, and the server's certificate signed by it: webpki
        # refuses an authority's own certificate as a server's.
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=portia-test-ca -keyout ca.key -out ca.crt
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
            -out server.crt
        rm -f ca.key server.csr server.ext
        chmod 600 server.key
        chmod 644 ca.crt server.crt
        if [ "$(id -u)" = 0 ]; then chown postgres server.key server.crt; fi
    ) >/dev/null 2>&1
}

start_postgres() {
    PG_BIN=$(find_pg_bin)
    if [ -z "$PG_BIN" ]; then
        echo "postgres.sh: no initdb found; installing Debian's postgresql" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        PG_BIN=$(find_pg_bin)
    fi
    if [ -z "$PG_BIN" ]; then
        echo "postgres.sh: cannot find or install Postgres (initdb, pg_ctl)" >&2
        return 1
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home postgres
    fi
    PG_TMP=$(mktemp -d)
    PG_DATA="$PG_TMP/data"
    trap stop_postgres EXIT
    chmod 755 "$PG_TMP"
    [ "$(id -u)" = 0 ] && chown postgres "$PG_TMP"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$PG_TMP/initdb.log" 2>&1 \
        || { cat "$PG_TMP/initdb.log" >&2; return 1; }
    local port tls=""
    port=$(free_port)
    if make_certificate; then
        tls="-c ssl=on -c ssl_cert_file=$PG_TMP/server.crt -c ssl_key_file=$PG_TMP/server.key"
        export PORTIA_TEST_PG_CA="$PG_TMP/ca.crt"
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_TMP/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 $tls" \
        >/dev/null || { cat "$PG_TMP/server.log" >&2; return 1; }
    export PORTIA_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
    echo "postgres.sh: Postgres $("$PG_BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}
