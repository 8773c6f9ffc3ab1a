"""ucloud-filescan. File-scan: registers the files users uploaded into their folders."""
