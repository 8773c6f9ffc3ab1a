"""ucloud-api. The REST API: users' requests about VMs, networks, images and keys, checked and written to etcd."""
