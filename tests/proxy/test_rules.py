"""The proxy's pure decisions, with plain values."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from voicerelay.proxy.rules import (
    admit,
    bearer,
    check_listen,
    is_loopback,
    parse_copy,
    upstream_headers,
    upstream_url,
)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.5", False), ("example.com", False)])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert (check_listen(host, None) is None) is loopback
    assert check_listen(host, "t") is None


def test_an_empty_token_is_refused() -> None:
    assert check_listen("127.0.0.1", " ") == "--token must not be empty"


def test_admit_checks_path_origin_token_capacity_in_order() -> None:
    ok = {"Authorization": "Bearer tok"}
    kw = {"token": "tok", "allow_origins": ["https://app.example"], "sessions": 0, "max_sessions": 2}
    assert admit("/v1/realtime?model=m", ok, **kw) is None  # type: ignore[arg-type]
    assert admit("/v1/realtime/", ok, **kw) is None  # type: ignore[arg-type]
    assert admit("/other", ok, **kw).status == HTTPStatus.NOT_FOUND  # type: ignore[arg-type, union-attr]
    assert admit("/v1/realtime", {**ok, "Origin": "https://evil"}, **kw).status == HTTPStatus.FORBIDDEN  # type: ignore[arg-type, union-attr]
    assert admit("/v1/realtime", {**ok, "Origin": "https://app.example/"}, **kw) is None  # type: ignore[arg-type]
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic tok"}):
        refusal = admit("/v1/realtime", headers, **kw)  # type: ignore[arg-type]
        assert refusal is not None and refusal.status == HTTPStatus.UNAUTHORIZED and "tok " not in refusal.message
    assert admit("/v1/realtime", ok, **{**kw, "sessions": 2}).status == HTTPStatus.SERVICE_UNAVAILABLE  # type: ignore[arg-type, union-attr]
    assert admit("/v1/realtime", {"Origin": "http://x"}, token=None, allow_origins=["*"], sessions=0,
                 max_sessions=1) is None


def test_bearer() -> None:
    assert bearer({"authorization": "Bearer  abc "}) == "abc"
    assert bearer({"authorization": "bearer abc"}) == "abc"
    assert bearer({"authorization": "Bearer "}) is None and bearer({}) is None


def test_upstream_url_keeps_the_clients_query_as_sent() -> None:
    assert upstream_url("wss://api.openai.com/v1/realtime", "/v1/realtime?model=gpt-realtime&x=%20y") == \
        "wss://api.openai.com/v1/realtime?model=gpt-realtime&x=%20y"
    assert upstream_url("ws://h:1/v1/realtime?region=eu&model=a", "/v1/realtime?model=b") == \
        "ws://h:1/v1/realtime?model=b&region=eu"
    assert upstream_url("ws://h:1/v1/realtime", "/v1/realtime") == "ws://h:1/v1/realtime"


def test_upstream_headers() -> None:
    client = [("Host", "p"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "k"),
              ("OpenAI-Beta", "realtime=v1"), ("Authorization", "Bearer sk-app"), ("Cookie", "c"),
              ("OpenAI-Organization", "org"), ("User-Agent", "ua"), ("Origin", "http://x")]
    kept = [("OpenAI-Beta", "realtime=v1"), ("OpenAI-Organization", "org")]
    assert upstream_headers(client, key="sk-proxy", token=None) == [*kept, ("Authorization", "Bearer sk-proxy")]
    assert upstream_headers(client, key=None, token="tok") == kept  # the token never goes upstream
    assert upstream_headers(client, key=None, token=None) == [*kept, ("Authorization", "Bearer sk-app")]


def test_parse_copy() -> None:
    assert parse_copy('{"type":"x"}') == {"type": "x"}
    assert parse_copy(b'{"type":"x"}') == {"type": "x"}
    for garbage in ("not json", "[1]", "3", b"\xff\xfe", '{"a":'):
        assert parse_copy(garbage) is None
