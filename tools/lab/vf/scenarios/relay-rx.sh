# Wire to front-end: the host injects frames to VF0's MAC once it sees "copy ready";
# vu-frontend prints what vhost-vf delivers.
start_daemon
vu-frontend recv /tmp/vu.sock --count 50 --timeout 600 --print 2>&1 | tag copy
stop_daemon
