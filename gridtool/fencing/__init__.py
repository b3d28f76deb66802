"""Fencing: ``rules`` is the pure protocol; ``shell`` reads fences and
runs plans against the store."""
