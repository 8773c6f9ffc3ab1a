# A QEMU slow to answer (2 s, within the 5 s QMP timeout) is still driven; one slower than the
# timeout is left alone (nothing is decided on a process that does not answer) until it is fast again.
scheduler s1
hosts h1
create web1
wait 3
slow web1 2
ask web1 suspend
wait 2
expect web1 SUSPENDED on h1
slow web1 6
ask web1 resume
wait 3
expect web1 SUSPENDED on h1
slow web1 0
wait 2
expect web1 RUNNING on h1
