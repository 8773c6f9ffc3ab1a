# The record says ERROR while its QEMU runs (what the old agent left when a start succeeded but the
# first answer failed, which it then tried to overwrite with RUNNING for ever): adopted, not restarted.
scheduler s1
hosts h1
create web1
wait 3
record web1 ERROR QMP query-status failed
wait 2
expect web1 RUNNING on h1
expect-starts web1 1
