"""``gridtool web serve``: a live, read-only web view of the fleet.

``mirror`` (an in-memory copy of the registry, fed by one watch, read as a Store),
``view`` (pure: records to page rows, filters and pages), ``listen`` (pure: what an
address requires), ``feed`` (the etcd watch and probe loop), ``server`` (the ASGI app,
its server-sent events and uvicorn); ``static/`` is the page (no build step).
"""
