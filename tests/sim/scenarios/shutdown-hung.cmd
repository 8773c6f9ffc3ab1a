# A guest that ignores the button and then hangs is still stopped hard at the deadline.
scheduler s1
hosts h1
create web1
wait 3
ignore-acpi web1
ask web1 shutdown
wait 2
hang web1
wait 35
expect web1 STOPPED on h1
