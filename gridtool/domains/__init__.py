"""Guest definitions, pure: libvirt domain XML and shared-storage rules."""
