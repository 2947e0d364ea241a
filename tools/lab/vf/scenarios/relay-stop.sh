# GET_VRING_BASE with frames in flight (a VM stopping): the index vhost-vf returns must cover
# exactly the frames it finished, which reach the wire, and none of the rest. Then a new
# front-end on the same VF: the VF was left clean.
start_daemon
vu-frontend stop /tmp/vu.sock --dst "$HOST_MAC" --count 256 2>&1 | tag stop
vu-frontend send /tmp/vu.sock --dst "$HOST_MAC" --count 50 2>&1 | tag after
stop_daemon
