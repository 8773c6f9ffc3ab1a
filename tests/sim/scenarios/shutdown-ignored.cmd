# A guest that ignores the button is stopped hard at the deadline (UCLOUD_SHUTDOWN_TIMEOUT, 30 s here).
scheduler s1
hosts h1
create web1
wait 3
ignore-acpi web1
ask web1 shutdown
wait 20
expect web1 STOPPING on h1
wait 12
expect web1 STOPPED on h1
