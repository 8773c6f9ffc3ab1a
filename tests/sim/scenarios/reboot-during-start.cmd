# A reboot while the VM starts is refused (it is not RUNNING yet: QEMU's first answer failed, so it
# stays STARTING until the next look); once it runs, the reboot resets it, once.
scheduler s1
hosts h1
fail-first-answer web1
create web1
wait 1
expect web1 STARTING on h1
ask web1 reboot
wait 6
expect web1 RUNNING on h1
ask web1 reboot
wait 2
expect-starts web1 1
