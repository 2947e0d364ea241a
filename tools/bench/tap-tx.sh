#!/usr/bin/env bash
# Guest-to-TAP forwarding rate: a testpmd net_virtio_user front-end in txonly mode (64 B)
# sends through a back-end into a TAP in a private namespace; the TAP's rx counter over a
# window gives the rate. Back-ends, run interleaved (A B A B ...) in one session:
#   vhost-vf  the daemon (release build)
#   dpdk      testpmd net_vhost + net_tap with io forwarding: DPDK's own vhost-to-TAP relay
# The front-end forwards on core 0 and the DPDK back-end on core 1; vhost-vf is event driven.
# Prints every run and the medians; only the ratio means anything on a shared machine.
#   tools/bench/tap-tx.sh [ROUNDS=5] [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}; window=${2:-10}
cargo build --release -p vhost-vf -q
ns=vhvfbench$$; dir=$(mktemp -d); sock=$dir/vu.sock; tap=vbt0
cleanup() { pkill -f "$dir" 2>/dev/null || true; sleep 0.5; ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
ip netns add "$ns"; ip -n "$ns" link set lo up

start_backend() {
    case $1 in
    vhost-vf) ip netns exec "$ns" target/release/vhost-vf --socket-path "$sock" --tap $tap \
                  --log-level warn >"$dir/be.log" 2>&1 & ;;
    dpdk) ip netns exec "$ns" dpdk-testpmd -l 0,1 --main-lcore 0 --no-pci --no-huge -m 1024 \
              --file-prefix="be$$" --vdev "net_vhost0,iface=$sock,queues=1" \
              --vdev "net_tap0,iface=$tap" -- --forward-mode=io --stats-period 5 \
              >"$dir/be.log" 2>&1 & ;;
    esac
    for _ in $(seq 100); do [ -S "$sock" ] && ip -n "$ns" link show $tap >/dev/null 2>&1 && break; sleep 0.1; done
}

run_one() { # backend -> pps
    rm -f "$sock"; start_backend "$1"
    dpdk-testpmd -l 0,1 --main-lcore 1 --no-pci --no-huge -m 1024 --file-prefix="fe$$" \
        --vdev "net_virtio_user0,path=$sock,queues=1" -- --forward-mode=txonly --txpkts=64 \
        --stats-period 5 >"$dir/fe.log" 2>&1 &
    local fe=$!
    sleep 3
    local a; a=$(ip netns exec "$ns" cat /sys/class/net/$tap/statistics/rx_packets)
    sleep "$window"
    local b; b=$(ip netns exec "$ns" cat /sys/class/net/$tap/statistics/rx_packets)
    kill -INT $fe; wait $fe 2>/dev/null || true
    pkill -INT -f "$sock" 2>/dev/null || true; sleep 1; pkill -9 -f "$sock" 2>/dev/null || true
    echo $(( (b - a) / window ))
}

declare -A results
for r in $(seq "$rounds"); do
    for be in vhost-vf dpdk; do
        pps=$(run_one $be); results[$be]+="$pps "
        echo "round $r $be ${pps} pps"
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
m_ours=$(echo "${results[vhost-vf]}" | median); m_dpdk=$(echo "${results[dpdk]}" | median)
echo "median vhost-vf ${m_ours} pps, dpdk ${m_dpdk} pps, ratio $(echo "scale=2; $m_ours / $m_dpdk" | bc)"
