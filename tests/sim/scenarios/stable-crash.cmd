# Crashes weeks apart are not a crash loop: after UCLOUD_STABLE_AFTER of running, the count restarts.
scheduler s1
hosts h1
create web1
wait 3
crash web1
wait 3
wait 700
crash web1
wait 3
expect web1 RUNNING on h1
