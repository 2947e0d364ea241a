# DPDK testpmd's net_virtio_user as the front-end: txonly for a few seconds (frames to the
# host), then rxonly while the host injects frames to VF0's MAC once it sees "rx ready".
# The command blocks write into testpmd's stdin; reports go to the console on fd 3.
exec 3>&1
start_daemon
testpmd() {
    dpdk-testpmd -l 0-1 -n 1 --no-pci --no-huge -m 256 --file-prefix=fe \
        --vdev "net_virtio_user0,path=/tmp/vu.sock,mac=$VF0_MAC" -- -i \
        --total-num-mbufs=4096 "$@" > /tmp/testpmd.log 2>&1
}
wait_for_log() {
    i=0
    until grep -q "$1" /tmp/testpmd.log 2>/dev/null || [ $i -ge 600 ]; do
        sleep 0.2
        i=$((i + 1))
    done
}
wait_prompt() { wait_for_log "testpmd>"; }
rm -f /tmp/testpmd.log
{
    wait_prompt
    echo "start"
    sleep 3
    echo "stop"
    echo "quit"
} | testpmd --forward-mode=txonly --txpkts=60 --eth-peer=0,"$HOST_MAC"
grep -E "TX-packets|RX-packets" /tmp/testpmd.log | tail -2 | tag tx
rm -f /tmp/testpmd.log
{
    wait_prompt
    echo "start"
    # testpmd empties its rx queues when forwarding starts: the host may inject only after.
    wait_for_log "forwards packets on"
    say "rx ready" >&3
    # The host injects its frames within this window.
    sleep 20
    echo "stop"
    echo "quit"
} | testpmd --forward-mode=rxonly
grep -E "TX-packets|RX-packets" /tmp/testpmd.log | tail -2 | tag rx
stop_daemon
