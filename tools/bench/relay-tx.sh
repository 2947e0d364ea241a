#!/usr/bin/env bash
# Relay rate in the SR-IOV lab, front-end to wire: in one lab boot, DPDK testpmd's
# net_virtio_user (txonly, 256 MB without hugepages, the VF's MAC as source) sends through two
# relays on the same emulated VF in turn (tools/lab/vf/scenarios/bench-relay.sh):
#   vhost-vf  the daemon, --vf (release build), event driven
#   dpdk      testpmd with net_vhost and the igbvf PMD, io forwarding, busy-polling one lcore
# ROUNDS rounds; in each, each relay gets a SECONDS window per frame length (60 and 1500 bytes
# without FCS, 64 and 1504 on the wire), so at each length the relays alternate A B A B. The
# rate is what reaches the host TAP between each window's "started" and "stopped" lines on the
# guest console. The front-end busy-polls guest CPU 1; both relays run on CPU 0, whose time
# under TCG also pays for QEMU's igb emulation: only the ratio means anything.
#   tools/bench/relay-tx.sh [ROUNDS=5] [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/bench/lib.sh
rounds=${1:-5}; secs=${2:-8}; sizes="60 1500"
cargo build --release -p vhost-vf -p vhost-vf-tools -q
guest=$(tools/lab/vf/build.sh --dpdk target/release/vhost-vf target/release/vu-frontend \
    target/release/vf-tool | tail -1)
lab_boot "$guest" bench-relay vflab.rounds="$rounds" vflab.seconds="$secs" \
    vflab.sizes="${sizes// /,}"

# Windows print as they close; what the relays and the front-end report about themselves
# (how busy each guest CPU was in each window, frames sent and dropped, the daemon's counters)
# follows each session, indented.
on_line() {
    case $1 in
    *" started") lab_window_start "${1% started}" ;;
    *" stopped") lab_window_end "${1% stopped}" ;;
    "fe "*) queued=$((queued + $(echo "$1" | awk '{print $4}'))); echo "    $1" ;;
    "cpu "*|"relay "*|"daemon "*|"daemon-exit "*|"relay-exit "*) echo "    $1" ;;
    esac
}
queued=0
lab_follow on_line $(( 120 + rounds * 2 * (2 * (secs + 2) + 60) ))
if [ $lab_done = yes ]; then
    # Nothing may be lost on the way; the guest's own kernel adds a few frames to the TAP's count.
    echo "frames queued by the front-end in all sessions: $queued, received by the TAP: $(lab_rx)"
else
    echo "the guest did not finish; console:" >&2; tail -40 "$lab_console" >&2
fi
status=0
for size in $sizes; do
    ours=${lab_results[vhost-vf/$size]:-} dpdk=${lab_results[dpdk/$size]:-}
    [ -n "$ours" ] && [ -n "$dpdk" ] || { echo "$size B: no complete round" >&2; status=1; continue; }
    m_ours=$(echo "$ours" | median); m_dpdk=$(echo "$dpdk" | median)
    echo "$size B: median vhost-vf ${m_ours} pps (runs ${ours% }), dpdk ${m_dpdk} pps" \
        "(runs ${dpdk% }), ratio $(ratio "$m_ours" "$m_dpdk")"
done
exit $status
