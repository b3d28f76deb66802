"""Storage fencing with SCSI-3 persistent reservations: :mod:`~gridtool.storage.pr` (pure
protocol, keys and the :class:`~gridtool.storage.pr.Reservations` port),
:mod:`~gridtool.storage.iscsi` (libiscsi back end), :mod:`~gridtool.storage.sgpersist`
(``sg_persist`` back end, its pure part in :mod:`~gridtool.storage.sgcli`)."""
