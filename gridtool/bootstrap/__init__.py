"""Host bootstrap over SSH: ``rules`` (the steps, pure), ``shell``
(paramiko)."""
