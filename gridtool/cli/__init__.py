"""The ``gridtool`` command line (click + rich)."""
