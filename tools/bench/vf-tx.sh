#!/usr/bin/env bash
# VF transmit rate in the SR-IOV lab: DPDK testpmd's igbvf PMD (txonly, 60-byte frames) and
# vhost-vf's igbvf driver (vf-tool send) take turns on the same emulated VF in one lab boot,
# ROUNDS times for SECONDS each (tools/lab/vf/scenarios/bench-tx.sh). The rate is what reaches
# the host TAP between each run's "started" and "sent=" lines on the guest console. QEMU's
# igb emulation under TCG bounds both: only the ratio means anything.
#   tools/bench/vf-tx.sh [ROUNDS=5] [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/bench/lib.sh
rounds=${1:-5}; secs=${2:-8}
cargo build --release -p vhost-vf-tools --bin vf-tool -q
guest=$(tools/lab/vf/build.sh --dpdk target/release/vf-tool | tail -1)
lab_boot "$guest" bench-tx vflab.rounds="$rounds" vflab.seconds="$secs"

on_line() {
    case $1 in
    "dpdk started"|"vhost-vf started") lab_window_start "${1% started}" ;;
    "dpdk sent="*|"vhost-vf sent="*) lab_window_end "${1%% sent=*}" ;;
    esac
}
lab_follow on_line $(( 120 + rounds * (2 * secs + 60) ))
[ -n "${lab_results[dpdk]:-}" ] && [ -n "${lab_results[vhost-vf]:-}" ] || { echo "no complete round; console:" >&2; tail -40 "$lab_console" >&2; exit 1; }
m_ours=$(echo "${lab_results[vhost-vf]}" | median); m_dpdk=$(echo "${lab_results[dpdk]}" | median)
echo "median vhost-vf ${m_ours} pps, dpdk ${m_dpdk} pps, ratio $(ratio "$m_ours" "$m_dpdk")"
