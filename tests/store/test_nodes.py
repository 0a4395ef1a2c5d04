"""Cluster membership (Store.register_node and the rest): every backend."""

from __future__ import annotations

from queuectld.jobs import NewJob
from queuectld.store.base import NodeRow, Store
from tests.store.conftest import Backend
from tests.store.test_contract import T0, claim, insert, one


def node(name: str, started_at: float = T0, **kw: object) -> NodeRow:
    fields: dict[str, object] = {
        "name": name,
        "host": f"host-{name}",
        "pid": 100,
        "started_at": started_at,
        "heartbeat_at": started_at,
        "slots": 4,
        "socket": f"/run/{name}.sock",
    }
    fields.update(kw)
    return NodeRow(**fields)  # type: ignore[arg-type]


def nodes(store: Store) -> list[NodeRow]:
    result: list[NodeRow] = one(store, lambda s: s.nodes())
    return result


def test_a_registered_node_is_listed_with_the_jobs_it_holds(store: Store) -> None:
    assert one(store, lambda s: s.register_node(node("b"))) is None
    assert one(store, lambda s: s.register_node(node("a", pid=7, slots=2))) is None
    insert(store, NewJob("true", id="1"), NewJob("true", id="2"), NewJob("true", id="3"))
    claim(store, limit=2, owner="a")
    listed = nodes(store)
    assert [n.name for n in listed] == ["a", "b"]
    assert listed[0] == node("a", pid=7, slots=2, running=2)
    assert listed[1] == node("b", running=0)


def test_registering_again_replaces_the_row_and_returns_the_old_one(store: Store) -> None:
    one(store, lambda s: s.register_node(node("a")))
    one(store, lambda s: s.stop_node("a", T0, T0 + 5))
    old = one(store, lambda s: s.register_node(node("a", started_at=T0 + 10, pid=8)))
    assert old == node("a", stopped_at=T0 + 5)
    (now,) = nodes(store)
    assert now == node("a", started_at=T0 + 10, pid=8)  # stopped_at cleared


def test_heartbeat_counts_only_for_the_start_that_holds_the_name(store: Store) -> None:
    one(store, lambda s: s.register_node(node("a")))
    assert one(store, lambda s: s.heartbeat_node("a", T0, T0 + 3, 6)) is True
    (row,) = nodes(store)
    assert (row.heartbeat_at, row.slots) == (T0 + 3, 6)
    one(store, lambda s: s.register_node(node("a", started_at=T0 + 10)))
    assert one(store, lambda s: s.heartbeat_node("a", T0, T0 + 11, 6)) is False
    assert one(store, lambda s: s.heartbeat_node("nobody", T0, T0 + 11, 6)) is False
    (row,) = nodes(store)
    assert (row.started_at, row.heartbeat_at, row.slots) == (T0 + 10, T0 + 10, 4)


def test_stop_marks_only_that_start(store: Store) -> None:
    one(store, lambda s: s.register_node(node("a", started_at=T0 + 10)))
    one(store, lambda s: s.stop_node("a", T0, T0 + 20))  # an older start: nothing
    assert nodes(store)[0].stopped_at is None
    one(store, lambda s: s.stop_node("a", T0 + 10, T0 + 20))
    assert nodes(store)[0].stopped_at == T0 + 20


def test_dead_nodes_are_taken_once(store: Store) -> None:
    one(store, lambda s: s.register_node(node("stale")))
    one(store, lambda s: s.register_node(node("stale2")))
    one(store, lambda s: s.register_node(node("fresh", heartbeat_at=T0 + 100)))
    one(store, lambda s: s.register_node(node("stopped")))
    one(store, lambda s: s.stop_node("stopped", T0, T0 + 1))
    taken = one(store, lambda s: s.take_dead_nodes(T0 + 50, T0 + 60))
    assert [n.name for n in taken] == ["stale", "stale2"]
    assert all(n.rescued_at == T0 + 60 for n in taken)
    assert one(store, lambda s: s.take_dead_nodes(T0 + 50, T0 + 70)) == []
    # A rescued node's old start can no longer heartbeat: its jobs were taken back.
    assert one(store, lambda s: s.heartbeat_node("stale", T0, T0 + 80, 4)) is False
    by_name = {n.name: n for n in nodes(store)}
    assert by_name["stale"].rescued_at == T0 + 60 and by_name["fresh"].rescued_at is None
    # It registers again after a restart: a member again, no longer rescued.
    one(store, lambda s: s.register_node(node("stale", started_at=T0 + 90)))
    assert one(store, lambda s: s.heartbeat_node("stale", T0 + 90, T0 + 95, 4)) is True


def test_membership_is_shared_by_every_store_on_the_database(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    one(first, lambda s: s.register_node(node("a")))
    assert [n.name for n in nodes(second)] == ["a"]
    assert one(second, lambda s: s.take_dead_nodes(T0 + 1, T0 + 2))[0].name == "a"
    assert one(first, lambda s: s.take_dead_nodes(T0 + 1, T0 + 3)) == []


def test_describe_names_the_store(store: Store) -> None:
    assert store.describe()
    assert "password" not in store.describe()
