"""Placement: ``rules`` is the allocator and ``rebalance`` the planner
(both pure); ``shell`` reads fleet views and migrates guests."""
