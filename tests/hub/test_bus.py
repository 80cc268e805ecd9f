"""The bus's feed frames: each principal's browsers get only its own runs' messages."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from hub.bus import Bus, Frame


async def test_a_tick_is_encoded_once_per_view_and_shows_each_principal_only_its_runs() -> None:
    """Browsers of one principal share a frame with its runs and the node lists;
    operators' frame holds every run; a principal with nothing this tick gets nothing."""
    bus = Bus(tick_s=0)
    got: dict[str, list[Frame]] = {name: [] for name in ("a1", "a2", "b", "c", "op")}

    def sink(name: str) -> Callable[[Frame], bool]:
        def take(frame: Frame) -> bool:
            got[name].append(frame)
            return True

        return take

    for name, principal in [
        ("a1", "key:a"),
        ("a2", "key:a"),
        ("b", "key:b"),
        ("c", "key:c"),
        ("op", None),
    ]:
        bus.subscribe_frames(sink(name), principal=principal)
    bus.publish({"type": "run", "run": {"id": "ra"}}, "ra", owner="key:a")
    bus.publish({"type": "run", "run": {"id": "rb"}}, "rb", owner="key:b")
    bus.publish({"type": "run", "run": {"id": "rt"}}, "rt", owner=None)  # a chat's run
    bus.publish({"type": "nodes", "nodes": []})
    frames_before = bus.frames_sent
    bus.flush()

    def ids(name: str) -> list[str]:
        (frame,) = got[name]
        return [
            m["run"]["id"] if m["type"] == "run" else m["type"] for m in orjson.loads(frame.payload)
        ]

    assert ids("a1") == ids("a2") == ["ra", "nodes"]
    assert got["a1"][0] is got["a2"][0]  # one encoding for both of A's browsers
    assert ids("b") == ["rb", "nodes"]
    assert ids("c") == ["nodes"]
    assert ids("op") == ["ra", "rb", "rt", "nodes"]
    assert bus.frames_sent == frames_before + 4  # a, b, c and the operators' view

    bus.publish({"type": "run", "run": {"id": "ra"}}, "ra", owner="key:a")
    bus.flush()
    assert [len(got[name]) for name in ("a1", "a2", "b", "c", "op")] == [2, 2, 1, 1, 2]
