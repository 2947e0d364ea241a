# --mac asks the PF to give VF0 another MAC. The lab's PF set VF0's MAC itself and does not
# trust the VF, so the daemon must refuse to start and say why; once the VF is trusted the
# daemon starts with the new MAC, the front-end reads it from the config space and sends
# from it.
NEW_MAC=$(arg vflab.new_mac)
if vhost-vf --socket-path /tmp/vu.sock --vf "$VF0" --mac "$NEW_MAC" > /tmp/refused.log 2>&1; then
    say "unexpected-start"
fi
tag refused < /tmp/refused.log
/sbin/ip2 link set "$PF_IF" vf 0 trust on && say "trusted"
start_daemon --mac "$NEW_MAC"
vu-frontend send /tmp/vu.sock --dst "$HOST_MAC" --count 20 2>&1 | tag sent
stop_daemon
