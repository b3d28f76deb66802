"""etcd authentication: ``rules`` (roles and permissions, pure); ``shell``,
``etcdauth``, ``certs`` and ``credfiles`` do the I/O."""
