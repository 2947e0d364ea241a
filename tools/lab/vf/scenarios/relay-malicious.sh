# Malicious tx chains (outside guest memory, at the daemon's own IOVAs, wrapping, huge) must
# come back unused and never reach the VF; good frames after them still go out.
start_daemon
vu-frontend malicious /tmp/vu.sock --dst "$HOST_MAC" --count 100 2>&1 | tag mal
stop_daemon
