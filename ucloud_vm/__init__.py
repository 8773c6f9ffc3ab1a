"""ucloud-vm. The host agent: runs this host's VMs in QEMU and reports what is true of them."""
