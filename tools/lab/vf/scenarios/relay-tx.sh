# Front-end to wire: vu-frontend sends numbered frames through vhost-vf and VF0 to the host,
# then UDP frames asking for checksum offload (NEEDS_CSUM), which the VF must complete, then
# frames split over three descriptors each (one VF descriptor per piece).
start_daemon
vu-frontend send /tmp/vu.sock --dst "$HOST_MAC" --count 200 2>&1 | tag plain
vu-frontend send /tmp/vu.sock --dst "$HOST_MAC" --count 200 --csum 2>&1 | tag csum
vu-frontend send /tmp/vu.sock --dst "$HOST_MAC" --count 100 --split 2>&1 | tag split
stop_daemon
