# Killed mid-traffic, the driver leaves the VF to the kernel's VFIO release; the next open must
# reset it and send again.
vf-tool send "$VF0" --dst "$HOST_MAC" --duration 600 > /tmp/first.log 2>&1 &
pid=$!
until grep -q started /tmp/first.log; do sleep 0.2; done
sleep 2
kill -9 $pid
wait $pid
say "killed"
vf-tool send "$VF0" --dst "$HOST_MAC" --count 100 | tag after
