# Deleting a running VM and a stopped one: processes, disks and records gone.
scheduler s1
hosts h1
create web1
create db1
wait 3
ask db1 shutdown
wait 5
expect db1 STOPPED on h1
ask web1 delete
ask db1 delete
wait 3
expect-gone web1
expect-gone db1
