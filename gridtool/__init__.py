"""gridtool: run a fleet of Xen/KVM hypervisor hosts through libvirt and etcd."""

__version__ = "0.1.0"
