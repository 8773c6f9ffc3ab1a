# QEMU fails to start: ERROR with its words; the owner starts it again and it runs.
scheduler s1
hosts h1
fail-start web1 could not open disk
create web1
wait 3
expect web1 ERROR on h1
ask web1 start
wait 3
expect web1 RUNNING on h1
