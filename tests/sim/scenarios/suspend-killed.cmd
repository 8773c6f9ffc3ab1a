# The seed's case: suspending a KILLED VM is refused (409) and the VM restarts as still requested.
scheduler s1
hosts h1
create web1
wait 3
crash web1
wait 1
expect web1 KILLED on h1
ask web1 suspend
wait 3
expect web1 RUNNING on h1
ask web1 suspend
wait 2
expect web1 SUSPENDED on h1
ask web1 resume
wait 2
expect web1 RUNNING on h1
