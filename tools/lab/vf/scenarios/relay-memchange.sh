# A memory table change under traffic (ADD_MEM_REG, buffers move, REM_MEM_REG): every frame
# acknowledged must reach the wire.
start_daemon
vu-frontend memchange /tmp/vu.sock --dst "$HOST_MAC" --count 600 2>&1 | tag mem
stop_daemon
