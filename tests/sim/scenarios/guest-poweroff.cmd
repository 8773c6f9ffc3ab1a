# The guest powers itself off: STOPPED (its owner's decision too), until started again.
scheduler s1
hosts h1
create web1
wait 3
poweroff web1
wait 2
expect web1 STOPPED on h1
ask web1 start
wait 3
expect web1 RUNNING on h1
