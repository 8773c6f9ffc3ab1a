"""`ucloud`: the command-line client. It speaks only to the REST API, never to etcd."""
