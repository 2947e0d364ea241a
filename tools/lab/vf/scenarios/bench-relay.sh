# Relay peer comparison: one front-end, DPDK testpmd's net_virtio_user in txonly mode, sends to
# the host through two relays on VF0 in turn, vflab.rounds times: "vhost-vf" (the daemon) and
# "dpdk" (testpmd with net_vhost and the igbvf PMD, io forwarding). Each relay serves one
# front-end session per round, with a window of vflab.seconds per frame length in vflab.sizes
# (without FCS), so at each length the relays alternate A B A B. "<relay>/<length> started" and
# "<relay>/<length> stopped" bracket each window; the host counts the frames that reach its TAP
# in between.
#
# CPUs: the guest has two. The front-end forwards on lcore 1 (CPU 1); its main lcore (CPU 0)
# only waits for commands. Each relay gets CPU 0: testpmd's forwarding lcore is 0 (its main
# lcore 1 sleeps in the stats loop), and vhost-vf, event driven, is pinned there with taskset.
secs=$(arg vflab.seconds)
rounds=$(arg vflab.rounds)
sizes=$(arg vflab.sizes | tr , ' ')
mkdir -p /dev/hugepages
mount -t hugetlbfs nodev /dev/hugepages
echo 128 > /proc/sys/vm/nr_hugepages
# The front-end's command block writes into testpmd's stdin; its reports go to the console on fd 3.
exec 3>&1
# The daemon's log reaches the console through tag: no colours.
export NO_COLOR=1

relay_start() {
    rm -f /tmp/vu.sock
    case $1 in
    vhost-vf)
        start_daemon
        # -a: every thread it has; threads it starts later inherit the mask.
        taskset -apc 0 "$DAEMON" > /dev/null
        ;;
    dpdk)
        # The relay's own memory is hugepages; it maps the front-end's memory (one region).
        # Ports: 0 = igbvf on VF0 (PCI probes before vdevs), 1 = net_vhost; io forwards
        # 1 -> 0 (and 0 -> 1, idle).
        # No -i: testpmd forwards from the start and stops on SIGTERM, printing its stats.
        dpdk-testpmd -l 0,1 --main-lcore 1 -n 1 -a "$VF0" --iova-mode=va --file-prefix=relay \
            --vdev "net_vhost0,iface=/tmp/vu.sock,queues=1" -- --forward-mode=io \
            --nb-cores=1 --rxq=1 --txq=1 --total-num-mbufs=8192 --stats-period 3600 \
            > /tmp/relay.log 2>&1 &
        RELAY=$!
        i=0
        until [ -S /tmp/vu.sock ] || [ $i -ge 600 ]; do sleep 0.2; i=$((i + 1)); done
        [ -S /tmp/vu.sock ] || { say "FAIL dpdk relay did not start"; tag relay < /tmp/relay.log; }
        ;;
    esac
}

relay_stop() {
    case $1 in
    vhost-vf) stop_daemon ;;
    dpdk)
        kill -TERM "$RELAY"
        wait "$RELAY"
        say "relay-exit $?"
        # Per port (0 = VF, 1 = vhost): frames in, out and dropped.
        awk '/statistics for port/ {p = $6} /Accumulated/ {p = ""}
             /-packets/ && p != "" {$1 = $1; print "relay port " p ": " $0}' /tmp/relay.log |
            while read -r stats; do say "$stats"; done
        ;;
    esac
}

# For CPU 0 then CPU 1, from /proc/stat: user, system, interrupt, busy (all but idle and iowait)
# and total jiffies; then the voluntary context switches of the daemon's threads (WATCH), each
# a wake-up of an event-driven thread.
cpu_sample() {
    awk '$1 == "cpu0" || $1 == "cpu1" {
        t = 0; for (i = 2; i <= 9; i++) t += $i
        printf "%d %d %d %d %d ", $2 + $3, $4, $7 + $8, t - $5 - $6, t }' /proc/stat
    if [ -n "$WATCH" ]; then
        cat /proc/"$WATCH"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'
    else
        echo 0
    fi
}
# "cpu KEY cpu0=N% (user N%, sys N%, irq N%) cpu1=N% [wake-ups=N/s]" between two samples.
cpu_report() { # KEY START END SECONDS
    echo "$2 $3" | awk -v k="$1" -v secs="$4" '{
        t0 = $16 - $5; t1 = $21 - $10
        printf "cpu %s cpu0=%d%% (user %d%%, sys %d%%, irq %d%%) cpu1=%d%%", k, 100 * ($15 - $4) / t0,
            100 * ($12 - $1) / t0, 100 * ($13 - $2) / t0, 100 * ($14 - $3) / t0, 100 * ($20 - $9) / t1
        if ($22 > $11) printf " wake-ups=%d/s", ($22 - $11) / secs
        printf "\n" }'
}

frontend() { # RELAY
    rm -f /tmp/fe.log
    WATCH=""
    [ "$1" = vhost-vf ] && WATCH=$DAEMON
    {
        # testpmd reads commands once it is up; the prompt shows when.
        i=0
        until grep -q "testpmd>" /tmp/fe.log 2>/dev/null || [ $i -ge 600 ]; do
            sleep 0.2
            i=$((i + 1))
        done
        for size in $sizes; do
            echo "set txpkts $size"
            echo "start"
            # Let the rings fill before the window opens.
            sleep 1
            say "$1/$size started" >&3
            c0=$(cpu_sample)
            sleep "$secs"
            say "$1/$size stopped" >&3
            say "$(cpu_report "$1/$size" "$c0" "$(cpu_sample)" "$secs")" >&3
            echo "stop"
        done
        echo "quit"
    } | dpdk-testpmd -l 0,1 --main-lcore 0 -n 1 --no-pci --no-huge -m 256 --file-prefix=fe \
        --vdev "net_virtio_user0,path=/tmp/vu.sock,queues=1,mac=$VF0_MAC" -- -i \
        --total-num-mbufs=4096 --forward-mode=txonly --eth-peer=0,"$HOST_MAC" \
        > /tmp/fe.log 2>&1
    grep -q "testpmd>" /tmp/fe.log || { say "FAIL front-end did not start"; tail -20 /tmp/fe.log | tag fe; }
    # What each window's "stop" reported: frames into the virtqueue, and dropped on a full ring.
    fe_relay=$1
    set -- $sizes
    grep -A2 "statistics for port" /tmp/fe.log | grep TX-packets | while read -r stats; do
        say "fe $fe_relay/$1 $stats"
        shift
    done
}

for round in $(seq 1 "$rounds"); do
    for relay in vhost-vf dpdk; do
        relay_start $relay
        frontend $relay
        relay_stop $relay
    done
done
