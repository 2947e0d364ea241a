# VF to host: numbered frames to the host's MAC, in interrupt mode, then in poll mode.
vf-tool send "$VF0" --dst "$HOST_MAC" --count 200 | tag irq
vf-tool send "$VF0" --dst "$HOST_MAC" --count 200 --poll | tag poll
