"""Pure health-check verdicts for ``gridtool check``, following the Nagios plugin guidelines.

Functional core: the shell (``gridtool.health.collect``, ``gridtool.cli.check``) collects a
:class:`~gridtool.health.snapshot.Snapshot` (plain frozen data, time passed in as ``now``),
calls :func:`~gridtool.health.checks.evaluate`, prints
:func:`~gridtool.health.render.render_text` or :func:`~gridtool.health.render.render_json`
and exits with :func:`~gridtool.health.report.exit_code`. Nothing here does I/O or reads a
clock; import from the modules:

* ``ranges``: statuses and the Nagios range language (``[@][start:]end``);
* ``snapshot``: what is judged (hosts, guests, fences, intents, pools, etcd endpoints);
* ``params``: thresholds and ignored codes from the command line;
* ``report``: finding codes, findings, perfdata, the report and its exit code;
* ``checks``: the checks and :func:`evaluate`;
* ``render``: the plugin's text and JSON output.

Conventions (monitoring-plugins development guidelines):

* exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; statuses combine worst-first with
  OK < UNKNOWN < WARNING < CRITICAL, so a real problem is never hidden behind UNKNOWN;
* UNKNOWN is for bad arguments and internal failures only (``unknown_report``); an
  unreachable registry is a CRITICAL fact about the service (``unreachable_report``);
* output is ``GRIDTOOL STATUS: text | perfdata`` then one detail line per finding;
* perfdata items are ``'label'=value[UOM];warn;crit;min;max`` with thresholds in range syntax.
"""
