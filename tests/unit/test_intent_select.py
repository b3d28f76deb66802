"""``intent list``'s filters and the registry read behind it (memstore: pure logic)."""

from __future__ import annotations

from dataclasses import replace

from gridtool.cli.intent import select
from gridtool.registry.intents import IntentClient, read_intents
from gridtool.registry.keys import Keys
from gridtool.registry.memstore import MemStore
from gridtool.registry.records import Intent


def _intent(i: int, host: str, state: str) -> Intent:
    return Intent(id=f"id{i}", host=host, action="start", guest=f"u{i}", name=f"g{i}",
                  created=float(i), by="test", state=state)


def test_select_by_state_and_host() -> None:
    intents = [_intent(1, "hv1", "done"), _intent(2, "hv2", "running"),
               _intent(3, "hv1", "pending")]
    assert [i.id for i in select(intents, (), None)] == ["id1", "id2", "id3"]
    assert [i.id for i in select(intents, ("pending", "running"), None)] == ["id2", "id3"]
    assert [i.id for i in select(intents, (), "hv1")] == ["id1", "id3"]
    assert select(intents, ("failed",), "hv1") == []


def test_collected_intents_stay_listed_until_their_lease_ends() -> None:
    now = [1000.0]
    store, keys = MemStore(clock=lambda: now[0]), Keys()
    client = IntentClient(store, keys)
    queued = client.submit("hv1", "stop", "u1", "web1")
    done = client.submit("hv2", "start", "u2", "db1")
    client.collect(replace(done, state="done", message="started"))
    listed, errors = read_intents(store, keys)
    assert errors == [] and [(i.id, i.state) for i in listed] == [
        (queued.id, "pending"), (done.id, "done")]
    assert store.get(keys.intent("hv2", done.id)) is None  # out of the agent's queue
    now[0] += 601
    assert [i.id for i in read_intents(store, keys)[0]] == [queued.id]
