#!/usr/bin/env bash
# VF transmit rate in the SR-IOV lab: DPDK testpmd's igbvf PMD (txonly, 60-byte frames) and
# vhost-vf's igbvf driver (vf-tool send) take turns on the same emulated VF in one lab boot,
# ROUNDS times for SECONDS each (tools/lab/vf/scenarios/bench-tx.sh). The rate is what reaches
# the host TAP between each run's "started" and "sent=" lines on the guest console. QEMU's
# igb emulation under TCG bounds both: only the ratio means anything.
#   tools/bench/vf-tx.sh [ROUNDS=5] [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}; secs=${2:-8}
cargo build --release -p vhost-vf-tools --bin vf-tool -q
guest=$(tools/lab/vf/build.sh --dpdk target/release/vf-tool | tail -1)
ns=vhvfvfb$$; tap=vfbench0; dir=$(mktemp -d); console=$dir/console.log
cleanup() { [ -n "${qemu:-}" ] && kill "$qemu" 2>/dev/null; sleep 0.5; ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" tuntap add dev $tap mode tap
ip netns exec "$ns" sysctl -qw net.ipv6.conf.$tap.disable_ipv6=1
ip -n "$ns" link set $tap up
host_mac=$(ip netns exec "$ns" cat /sys/class/net/$tap/address)
: > "$console"
ip netns exec "$ns" tools/lab/vf/boot.sh "$guest" $tap "$console" vflab.scenario=bench-tx \
    vflab.host_mac="$host_mac" vflab.rounds="$rounds" vflab.seconds="$secs" &
qemu=$!

now() { date +%s.%N; }
rx() { ip netns exec "$ns" cat /sys/class/net/$tap/statistics/rx_packets; }
declare -A results
seen=0 tool="" t0=0 n0=0
deadline=$(( $(date +%s) + 120 + rounds * (2 * secs + 60) ))
while kill -0 $qemu 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do
    mapfile -t lines < <(grep -a '^VFLAB:' "$console" | tr -d '\r')
    while [ $seen -lt ${#lines[@]} ]; do
        line=${lines[$seen]#VFLAB:}; seen=$((seen + 1))
        case $line in
        "dpdk started"|"vhost-vf started") tool=${line% started}; t0=$(now); n0=$(rx) ;;
        "dpdk sent="*|"vhost-vf sent="*)
            n1=$(rx); t1=$(now)
            pps=$(echo "($n1 - $n0) / ($t1 - $t0)" | bc)
            results[$tool]+="$pps "
            echo "$tool: $pps pps ($((n1 - n0)) frames)" ;;
        FAIL*) echo "guest: $line" >&2 ;;
        DONE) break 2 ;;
        esac
    done
    sleep 0.05
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
[ -n "${results[dpdk]:-}" ] && [ -n "${results[vhost-vf]:-}" ] || { echo "no complete round; console:" >&2; tail -40 "$console" >&2; exit 1; }
m_ours=$(echo "${results[vhost-vf]}" | median); m_dpdk=$(echo "${results[dpdk]}" | median)
echo "median vhost-vf ${m_ours} pps, dpdk ${m_dpdk} pps, ratio $(echo "scale=2; $m_ours / $m_dpdk" | bc)"
