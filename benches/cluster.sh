#!/usr/bin/env bash
# The cluster benchmark: qpq-load against one node on SQLite, one node on PostgreSQL, and two
# nodes on PostgreSQL + NATS, on this machine, in one run; then the store ceilings (the
# server's own statements, no RPC). Needs PostgreSQL and NATS (`. .ci/services` finds them).
#
#   benches/cluster.sh [qpq-load arguments...]     e.g. --senders 16 --messages 1000
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/services
load_args=("$@")
[ ${#load_args[@]} -eq 0 ] && load_args=(--senders 16 --messages 1000 --in-flight 4)

cargo build --release -q -p qpq-server -p qrpc-benches --bin qpq-server --bin qpq-load
bin=target/release

db="qpq_bench_$$"
prefix="qpqbench$$"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    psql "$QPQ_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
psql "$QPQ_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
db_url="${QPQ_TEST_POSTGRES_URL%/*}/$db"

echo "== one node, SQLite (embedded in qpq-load)"
"$bin/qpq-load" "${load_args[@]}"

echo "== one node, PostgreSQL (embedded in qpq-load)"
psql "$QPQ_TEST_POSTGRES_URL" -qc "CREATE DATABASE ${db}_single" >/dev/null
"$bin/qpq-load" --postgres-url "${QPQ_TEST_POSTGRES_URL%/*}/${db}_single" "${load_args[@]}"
psql "$QPQ_TEST_POSTGRES_URL" -qc "DROP DATABASE ${db}_single WITH (FORCE)" >/dev/null

echo "== two nodes, PostgreSQL + NATS"
cat > "$work/qpq-server.toml" <<TOML
[cluster]
nats_prefix = "$prefix"
nodes = 2
[limits]
calls_per_second_per_ip = 20000000
logins_per_minute_per_ip = 20000000
logins_per_minute_per_account = 20000000
auth_attempts_per_connection = 20000000
resumes_per_minute_per_ip = 20000000
messages_per_second_per_user = 20000000
stranger_messages_per_minute_per_user = 20000000
writes_per_second_per_user = 20000000
key_package_fetches_per_minute_per_pair = 20000000
key_package_fetches_per_minute_per_user = 20000000
max_pending_per_sender = 10000000
max_pending_per_stranger = 10000000
max_pending_bytes_per_sender = 1099511627776
max_pending_bytes_per_stranger = 1099511627776
max_queue_depth = 10000000
max_queue_bytes = 1099511627776
TOML
addrs=()
fingerprint=""
for node in 1 2; do
    mkdir -p "$work/n$node"
    QPQ_LOG=warn "$bin/qpq-server" --config "$work/qpq-server.toml" --data-dir "$work/n$node" \
        --listen 127.0.0.1:0 --postgres-url "$db_url" --nats-url "$QPQ_TEST_NATS_URL" \
        --node-id "n$node" > "$work/n$node.out" 2>"$work/n$node.err" &
    pids+=($!)
    for _ in $(seq 1 200); do
        grep -q "^certificate sha256" "$work/n$node.out" 2>/dev/null && break
        sleep 0.1
    done
    addrs+=("$(sed -n 's/^qpq-server listening on //p' "$work/n$node.out")")
    fingerprint=$(sed -n 's/^certificate sha256: //p' "$work/n$node.out")
done
"$bin/qpq-load" --server "$(IFS=,; echo "${addrs[*]}")" --pin "$fingerprint" "${load_args[@]}"

echo "== store ceilings (the server's statements, no RPC)"
cargo bench -q -p qrpc-benches --bench messenger -- store_ceiling
