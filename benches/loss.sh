#!/usr/bin/env bash
# Call latency of qrpc, tonic and raw quinn under packet loss, side by side.
#
# Needs root (it creates a network namespace) and nftables (`nft`). Not part of CI. Each run
# happens on the loopback interface of a fresh namespace whose nftables output chain drops a
# random share of packets (`numgen random mod 100 < N drop`), so nothing outside this machine is
# touched.
#
#   sudo benches/loss.sh                 # 0, 1, 3 and 5 % loss; 1 and 32 calls in flight; 10 s each
#   LOSSES="1 3" SECONDS_EACH=5 sudo benches/loss.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LOSSES=${LOSSES:-"0 1 3 5"}
IN_FLIGHT=${IN_FLIGHT:-"1 32"}
STACKS=${STACKS:-"qrpc qrpc-quinn-defaults tonic quinn"}
SECONDS_EACH=${SECONDS_EACH:-10}
NS=qrpc-loss-$$

command -v nft >/dev/null || { echo "loss.sh needs nftables (nft)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "loss.sh needs root (network namespaces)" >&2; exit 1; }

cargo build --release -p qrpc-benches --bin rpc-loss
BIN=target/release/rpc-loss

ip netns add "$NS"
trap 'ip netns del "$NS"' EXIT
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" nft add table inet loss
ip netns exec "$NS" nft add chain inet loss output '{ type filter hook output priority 0 ; }'

for loss in $LOSSES; do
    ip netns exec "$NS" nft flush chain inet loss output
    if [ "$loss" != 0 ]; then
        ip netns exec "$NS" nft add rule inet loss output "numgen random mod 100 < $loss drop"
    fi
    echo "== ${loss}% loss"
    for inflight in $IN_FLIGHT; do
        for stack in $STACKS; do
            ip netns exec "$NS" "$BIN" --stack "$stack" --in-flight "$inflight" --seconds "$SECONDS_EACH"
        done
    done
done
