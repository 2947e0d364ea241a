# Shared by the SR-IOV lab benchmarks (vf-tx.sh, relay-tx.sh); sourced from the repository root.
#   lab_boot GUEST SCENARIO [KERNEL ARGS...]   boots the lab guest in the background on a TAP in a
#                                               private namespace, all removed at exit
#   lab_follow HANDLER SECONDS                  calls HANDLER with each new "VFLAB:" console line
#                                               (prefix stripped) until DONE, QEMU's exit or timeout
#   lab_window_start KEY / lab_window_end KEY   the rate at which frames reached the TAP in between:
#                                               printed and added to lab_results[KEY]
#   median                                      of the numbers on stdin
#   ratio A B                                   A / B to two decimals
# VHVF_BENCH_CONSOLE=FILE keeps a copy of the guest's console.
declare -gA lab_results=()
lab_ns=vhvflab$$ lab_tap=vfbench0 lab_dir=$(mktemp -d) lab_qemu="" lab_done=no
lab_console=$lab_dir/console.log
declare -gA lab_t0=() lab_n0=()

lab_cleanup() {
    [ -n "$lab_qemu" ] && kill "$lab_qemu" 2>/dev/null
    sleep 0.5
    [ -n "${VHVF_BENCH_CONSOLE:-}" ] && cp "$lab_console" "$VHVF_BENCH_CONSOLE"
    ip netns del "$lab_ns" 2>/dev/null || true
    rm -rf "$lab_dir"
}
trap lab_cleanup EXIT

lab_boot() { # GUEST SCENARIO [KERNEL ARGS...]
    local guest=$1 scenario=$2 host_mac
    shift 2
    ip netns add "$lab_ns"
    ip -n "$lab_ns" tuntap add dev $lab_tap mode tap
    ip netns exec "$lab_ns" sysctl -qw net.ipv6.conf.$lab_tap.disable_ipv6=1
    ip -n "$lab_ns" link set $lab_tap up
    host_mac=$(ip netns exec "$lab_ns" cat /sys/class/net/$lab_tap/address)
    : > "$lab_console"
    ip netns exec "$lab_ns" tools/lab/vf/boot.sh "$guest" $lab_tap "$lab_console" \
        vflab.scenario="$scenario" vflab.host_mac="$host_mac" "$@" &
    lab_qemu=$!
}

lab_now() { date +%s.%N; }
lab_rx() { ip netns exec "$lab_ns" cat /sys/class/net/$lab_tap/statistics/rx_packets; }

lab_window_start() { # KEY
    lab_t0[$1]=$(lab_now)
    lab_n0[$1]=$(lab_rx)
}

lab_window_end() { # KEY
    local n1 t1 pps
    [ -n "${lab_t0[$1]:-}" ] || { echo "$1: end without start" >&2; return 0; }
    n1=$(lab_rx); t1=$(lab_now)
    pps=$(echo "($n1 - ${lab_n0[$1]}) / ($t1 - ${lab_t0[$1]})" | bc)
    lab_results[$1]+="$pps "
    echo "$1: $pps pps ($((n1 - lab_n0[$1])) frames)"
}

lab_follow() { # HANDLER SECONDS
    local handler=$1 deadline=$(( $(date +%s) + $2 )) seen=0 line lines complete
    while kill -0 "$lab_qemu" 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do
        # Only lines already ended: the last one may still be arriving.
        complete=$(wc -l < "$lab_console")
        mapfile -t lines < <(head -n "$complete" "$lab_console" | grep -a '^VFLAB:' | tr -d '\r')
        while [ $seen -lt ${#lines[@]} ]; do
            line=${lines[$seen]#VFLAB:}; seen=$((seen + 1))
            case $line in
            FAIL*) echo "guest: $line" >&2 ;;
            DONE) lab_done=yes; return 0 ;;
            *) "$handler" "$line" ;;
            esac
        done
        sleep 0.05
    done
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f\n", a / b}'; }
