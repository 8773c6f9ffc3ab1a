# Shutdown: the ACPI button, STOPPING, the guest powers off 3 s later: STOPPED; no worker waits.
scheduler s1
hosts h1
create web1
wait 3
ask web1 shutdown
wait 5
expect web1 STOPPED on h1
