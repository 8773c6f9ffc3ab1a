# QEMU killed: KILLED with its last words, restarted after 1 s, then 2 s.
scheduler s1
hosts h1
create web1
wait 3
crash web1
wait 3
expect web1 RUNNING on h1
crash web1
wait 4
expect web1 RUNNING on h1
