"""What of a lab segment (gridtool/lab/segment.py) is still there after it was taken down."""

from __future__ import annotations

from gridtool.lab import segment as lab_segment
from gridtool.lab.procs import cmdline


def left_behind(seg: lab_segment.Segment, pids: list[int]) -> list[str]:
    """What of the segment still exists: namespace, veth, processes (``pids``: its switch,
    vblades, ...), the switch's sockets."""
    found = [seg.ns] if seg.ns in lab_segment.ip("netns", "list").stdout else []
    if lab_segment.ip("link", "show", seg.root_if, check=False).returncode == 0:
        found.append(seg.root_if)
    found += [f"pid {p}" for p in pids if cmdline(p)]
    return found + ([str(seg.switch_dir)] if seg.switch_dir.exists() else [])
