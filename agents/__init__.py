"""gridtool-agent: one per hypervisor host; mirrors libvirt state into the etcd registry."""
