# Peer comparison: DPDK testpmd's igbvf PMD (txonly, 60-byte frames) and vf-tool send take turns
# on VF0 for vflab.rounds rounds of vflab.seconds each. "<tool> started" and "<tool> sent="
# bracket each run; the host counts the frames that reach its TAP in between.
secs=$(arg vflab.seconds)
rounds=$(arg vflab.rounds)
mkdir -p /dev/hugepages
mount -t hugetlbfs nodev /dev/hugepages
echo 128 > /proc/sys/vm/nr_hugepages
# The command block below writes into testpmd's stdin; its reports go to the console on fd 3.
exec 3>&1
for round in $(seq 1 "$rounds"); do
    rm -f /tmp/testpmd.log
    {
        # testpmd reads commands once it is up; the prompt shows when.
        i=0
        until grep -q "testpmd>" /tmp/testpmd.log 2>/dev/null || [ $i -ge 600 ]; do
            sleep 0.2
            i=$((i + 1))
        done
        echo "set fwd txonly"
        echo "set txpkts 60"
        echo "start"
        say "dpdk started" >&3
        sleep "$secs"
        echo "stop"
        say "dpdk sent=done" >&3
        echo "quit"
    } | dpdk-testpmd -l 0-1 -n 1 -a "$VF0" --iova-mode=va --file-prefix=vflab -- -i \
        --nb-cores=1 --rxq=1 --txq=1 --total-num-mbufs=8192 --eth-peer=0,"$HOST_MAC" \
        > /tmp/testpmd.log 2>&1
    grep -q "testpmd>" /tmp/testpmd.log || { say "FAIL testpmd did not start"; tail -20 /tmp/testpmd.log | tag testpmd; }
    vf-tool send "$VF0" --dst "$HOST_MAC" --duration "$secs" | tag vhost-vf
done
