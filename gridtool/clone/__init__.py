"""Templates and clones: ``rules`` is pure (clone plans, XML rewriting);
``shell`` and ``templates`` talk to the registry and the hosts."""
