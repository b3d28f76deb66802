"""HA: ``rules`` decides restarts (pure); ``manager`` is the leader-elected
shell that reads the registry and carries the decisions out."""
