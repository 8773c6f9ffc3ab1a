# A QEMU that does not answer: nothing is decided on it (it may be busy), until it answers again.
scheduler s1
hosts h1
create web1
wait 3
hang web1
ask web1 suspend
wait 10
expect web1 RUNNING on h1
recover web1
wait 6
expect web1 SUSPENDED on h1
