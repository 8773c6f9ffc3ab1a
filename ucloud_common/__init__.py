"""What every ucloud process shares: key families and their models, the dual state table,
the etcd store, configuration and logging. It imports no daemon (checked by import-linter)."""
