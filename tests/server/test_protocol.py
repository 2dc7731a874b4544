"""The WebSocket protocol's pure part: text messages to actions, frame ids, replies, Origin rules."""

from __future__ import annotations

import json

import pytest

from fer_async.labels import EMOTIONS
from fer_async.server import protocol
from fer_async.server.protocol import BadMessage, FrameIds, NextFrameId, Ping, parse_text


def test_ping_and_frame_messages() -> None:
    assert parse_text('{"type": "ping"}') == Ping()
    assert parse_text('{"type": "frame", "id": 0}') == NextFrameId(0)
    assert parse_text(json.dumps({"type": "frame", "id": protocol.MAX_FRAME_ID})) == NextFrameId(protocol.MAX_FRAME_ID)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "must be JSON objects; send frames as binary"),
        ("[1, 2]", "must be JSON objects"),
        ('{"id": 3}', "unknown message type missing"),
        ('{"type": "hello"}', 'unknown message type "hello"'),
        ('{"type": "frame", "id": -1}', "non-negative integer"),
        ('{"type": "frame", "id": true}', "non-negative integer"),
        ('{"type": "frame", "id": 1.5}', "non-negative integer"),
        (json.dumps({"type": "frame", "id": protocol.MAX_FRAME_ID + 1}), "non-negative integer"),
        (json.dumps({"type": "ping", "pad": "x" * protocol.MAX_TEXT_CHARS}), "too long"),
    ],
)
def test_bad_text_messages_are_errors(text: str, says: str) -> None:
    action = parse_text(text)
    assert isinstance(action, BadMessage) and says in action.error, action


def test_frame_ids_count_binary_messages_unless_named() -> None:
    ids = FrameIds()
    assert [ids.take(), ids.take()] == [1, 2]
    ids.name_next(100)
    assert ids.take() == 100
    assert ids.take() == 4  # the count goes on regardless
    assert ids.received == 4


def test_replies() -> None:
    hello = protocol.hello(1234)
    assert hello == {"type": "hello", "emotions": list(EMOTIONS), "max_frame_bytes": 1234}
    assert protocol.error("bad", 7) == {"type": "error", "frame": 7, "error": "bad"}
    assert protocol.error("bad") == {"type": "error", "error": "bad"}
    assert protocol.dropped(3) == {"type": "dropped", "frame": 3}
    result = protocol.result(5, {"width": 2, "height": 1, "faces": []}, 4)
    assert result == {"type": "result", "frame": 5, "width": 2, "height": 1, "faces": [], "dropped": 4}
    assert json.loads(protocol.encode(result)) == result


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),  # scripts send no Origin
        ("http://127.0.0.1:8080", (), True),  # same origin
        ("HTTP://127.0.0.1:8080/", (), True),
        ("http://evil.example", (), False),
        ("null", (), False),
        ("http://app.example", ("http://app.example:80",), True),
        ("https://app.example", ("http://app.example",), False),
        ("http://evil.example", ("*",), True),
    ],
)
def test_origin_rules(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    assert protocol.origin_allowed(origin, "http", "127.0.0.1:8080", allowed) is ok
