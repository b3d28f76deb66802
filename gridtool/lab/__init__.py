"""The lab: a real etcd and simulated hypervisor hosts (real libvirtd + agent) on one machine."""
