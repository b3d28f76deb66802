"""The Prometheus exporter against a real registry, validated by the client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from gridtool.health.metrics import serve
from gridtool.lab.procs import free_port
from tests.harness.testbed import domain_xml, wait_until


def test_metrics_parse_and_count_the_fleet(lab_hosts, registry, store, cfg):  # type: ignore[no-untyped-def]
    port = free_port()
    server, _thread, watch = serve(store, cfg.keys, port)
    try:
        lab_hosts.add("hv1")
        lab_hosts.start_agent("hv1")
        conn = lab_hosts.conn("hv1")
        conn.defineXML(domain_xml("a", disk="/dev/etherd/e4.1", block=True)).create()
        conn.defineXML(domain_xml("b"))
        wait_until(lambda: len(registry.list_guests()[0]) == 2, what="sync")
        # The agent adopts the running guest and takes its fence after writing
        # the guest record: wait for the fence, not only for the records.
        wait_until(lambda: len(store.list(cfg.keys.fences)[0]) == 1, what="a's fence")
        from gridtool.pools.shell import create, new_spec

        create(store, cfg.keys, new_spec("web", "tmpl", 1, 9, desired=3, warm=3))
        from gridtool.pools.rules import PoolStatus
        from gridtool.registry.records import Intent, encode

        store.put(cfg.keys.pool_status("web"), encode(PoolStatus(
            "web", 1.0, 3, ready=2, starting=0, warm=2, warming=1)))

        done = Intent("c1", "hv9", "clone", "u-c1", "w-1", 1.0, "t", "done",
                      params={"result": {"timings": {"overlay": 0.012, "define": 0.002,
                                                     "start": 0.3}}})
        store.put(cfg.keys.intent("hv9", "c1"), encode(done))

        def scrape() -> dict:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            return {s.name + str(sorted(s.labels.items())): s.value
                    for fam in text_string_to_metric_families(text.decode())
                    for s in fam.samples}

        values = wait_until(lambda: (v := scrape()).get(
            "gridtool_event_propagation_seconds_count[]", 0) > 0 and v,
            what="a propagation sample")
        assert values["gridtool_registry_up[]"] == 1
        assert values["gridtool_hosts_up[]"] == 1
        assert values["gridtool_guests[('state', 'running')]"] == 1
        assert values["gridtool_guests[('state', 'shutoff')]"] == 1
        assert values["gridtool_fences_held[]"] == 1  # taken by its agent
        assert values["gridtool_pool_desired[('pool', 'web')]"] == 3
        assert values["gridtool_pool_members[('pool', 'web')]"] == 0
        assert values["gridtool_pool_ready[('pool', 'web')]"] == 2
        assert values["gridtool_pool_warm[('pool', 'web'), ('state', 'asleep')]"] == 2
        assert values["gridtool_pool_warm[('pool', 'web'), ('state', 'booting')]"] == 1
        values = wait_until(lambda: (v := scrape()).get(
            "gridtool_clone_phase_seconds_count[('phase', 'overlay')]", 0) > 0 and v,
            what="a clone phase sample")
        assert values["gridtool_clone_phase_seconds_bucket[('le', '0.025'), ('phase', "
                      "'overlay')]"] == 1
        assert values["gridtool_clone_phase_seconds_bucket[('le', '0.25'), ('phase', "
                      "'start')]"] == 0
        assert values["gridtool_clone_phase_seconds_sum[('phase', 'start')]"] == 0.3
    finally:
        watch.cancel()
        server.shutdown()
