"""Pools: ``rules`` (pool plans), ``flex`` (the flex policy), ``erlang`` and
``queuesim`` are pure; ``shell`` (pool records) and ``keeper`` (the leader's pool
round) talk to the registry."""
