# The VF's link follows the PF's: the PF goes down and up again while vu-frontend watches the
# config space; vhost-vf must send a config-change notification each time, with the new link.
start_daemon
vu-frontend watch-config /tmp/vu.sock --duration 600 2>&1 | while IFS= read -r line; do
    say "watch $line"
    echo "$line" >> /tmp/watch.log
done &
configs() { grep -c '^config ' /tmp/watch.log 2>/dev/null || echo 0; }
wait_configs() {
    i=0
    until [ "$(configs)" -ge "$1" ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i + 1)); done
}
wait_configs 1
/sbin/ip2 link set "$PF_IF" down && say "pf down"
wait_configs 2
/sbin/ip2 link set "$PF_IF" up && say "pf up"
wait_configs 3
pkill vu-frontend
stop_daemon
