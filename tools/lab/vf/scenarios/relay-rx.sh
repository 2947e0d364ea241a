# Wire to front-end, twice: with 1536-byte rx buffers (too small for the VF to write into:
# vhost-vf copies) and with 4096-byte ones (the VF writes frames straight into them). The host
# injects frames to VF0's MAC once it sees "<mode> ready"; vu-frontend prints what arrives.
start_daemon
vu-frontend recv /tmp/vu.sock --count 50 --timeout 600 --print --buf-size 1536 2>&1 | tag copy
vu-frontend recv /tmp/vu.sock --count 50 --timeout 600 --print --buf-size 4096 2>&1 | tag direct
stop_daemon
