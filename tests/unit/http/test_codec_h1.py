"""codec_h1: the bytes a head becomes, the status lines and reason phrases (Envoy's), field-name and
field-value validation (RFC 9110 section 5.1 and 5.5), chunk encoding (RFC 9112 section 7.1)."""

from __future__ import annotations

import h11
import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http.codec_h1 import (
    HOP_BY_HOP_RESPONSE,
    LAST_CHUNK,
    REASON,
    STATUS_LINE,
    STATUS_LINE_10,
    chunked_only,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    status_for_parse_error,
    status_line,
    valid_header_name,
    valid_header_value,
)

# -- encode_response_head / encode_request_head: exact bytes ----------------------------------------
RESPONSE_HEADS = [
    (200, [], False, b"HTTP/1.1 200 OK\r\n\r\n"),
    (
        200,
        [(b"content-length", b"2"), (b"server", b"envoy")],
        False,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nserver: envoy\r\n\r\n",
    ),
    (404, [(b"x-a", b"1"), (b"x-a", b"2")], False, b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\nx-a: 2\r\n\r\n"),
    (418, [], False, b"HTTP/1.1 418 Unknown\r\n\r\n"),  # Envoy's reason, not Python's "I'm a Teapot"
    (599, [], False, b"HTTP/1.1 599 Last Unassigned Server Error Code\r\n\r\n"),
    (509, [], False, b"HTTP/1.1 509 Unknown\r\n\r\n"),
    (200, [(b"connection", b"keep-alive")], True, b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n"),
    (204, [(b"x-empty", b"")], False, b"HTTP/1.1 204 No Content\r\nx-empty: \r\n\r\n"),
]


@pytest.mark.parametrize(("status", "headers", "http10", "wire"), RESPONSE_HEADS)
def test_encode_response_head(
    status: int, headers: list[tuple[bytes, bytes]], http10: bool, wire: bytes
) -> None:
    assert encode_response_head(status, headers, http10) == wire


REQUEST_HEADS = [
    (b"GET", b"/", b"a.test", [], b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n"),
    (
        b"POST",
        b"/p?q=1",
        b"a.test:8080",
        [(b"content-length", b"3"), (b"x-b", b"v v")],
        b"POST /p?q=1 HTTP/1.1\r\nhost: a.test:8080\r\ncontent-length: 3\r\nx-b: v v\r\n\r\n",
    ),
    # The host goes first whatever the header order (Envoy writes :authority as host first).
    (b"HEAD", b"*", b"h", [(b"x", b"1")], b"HEAD * HTTP/1.1\r\nhost: h\r\nx: 1\r\n\r\n"),
    (b"GET", b"/", b"", [], b"GET / HTTP/1.1\r\nhost: \r\n\r\n"),  # empty Host is legal (RFC 9112 3.2)
]


@pytest.mark.parametrize(("method", "path", "authority", "headers", "wire"), REQUEST_HEADS)
def test_encode_request_head(
    method: bytes, path: bytes, authority: bytes, headers: list[tuple[bytes, bytes]], wire: bytes
) -> None:
    assert encode_request_head(method, path, authority, headers) == wire


# -- status lines ----------------------------------------------------------------------------------
# Envoy 1.40 (observed with direct_response for every code 200..599): reason phrases where they
# differ from Python's http.HTTPStatus, and a few that agree, for good measure.
ENVOY_REASONS = {
    100: b"Continue",
    200: b"OK",
    226: b"IM Used",
    306: b"Unknown",
    308: b"Permanent Redirect",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    418: b"Unknown",
    421: b"Misdirected Request",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    451: b"Unknown",
    501: b"Not Implemented",
    509: b"Unknown",
}


@pytest.mark.parametrize(("code", "reason"), sorted(ENVOY_REASONS.items()))
def test_reason_phrases_are_envoys(code: int, reason: bytes) -> None:
    assert REASON[code] == reason
    assert STATUS_LINE[code] == b"HTTP/1.1 %d %s\r\n" % (code, reason)
    assert STATUS_LINE_10[code] == b"HTTP/1.0 %d %s\r\n" % (code, reason)


@pytest.mark.parametrize(
    ("code", "reason"), [(425, b"Too Early"), (599, b"Last Unassigned Server Error Code")]
)
def test_reason_phrases_newer_than_most_codes_cc_copies(code: int, reason: bytes) -> None:
    assert REASON[code] == reason


def test_every_status_line_parses_as_http11() -> None:
    for code in range(100, 600):
        line = STATUS_LINE[code]
        assert status_line(code) is line
        if code == 101:
            continue  # h11 reads a 101 only after an Upgrade request
        c = h11.Connection(h11.CLIENT)
        c.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
        c.send(h11.EndOfMessage())
        c.receive_data(line + b"content-length: 0\r\n\r\n")
        ev = c.next_event()
        assert isinstance(ev, h11.Response | h11.InformationalResponse)
        assert ev.status_code == code
        assert ev.reason == REASON[code]


@pytest.mark.parametrize("code", [0, 99, 1000, 12345])
def test_status_line_outside_the_table(code: int) -> None:
    assert status_line(code) == b"HTTP/1.1 %d Unknown\r\n" % code
    assert status_line(code, http10=True) == b"HTTP/1.0 %d Unknown\r\n" % code


# -- field names: RFC 9110 section 5.6.2 token ------------------------------------------------------
TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

NAME_CASES = [
    (b"host", True),
    (b"X-Forwarded-For", True),
    (b"x_underscore", True),  # a token; what to do with it is headers_with_underscores_action's job
    (TCHAR, True),
    (b"a", True),
    (b"", False),
    (b"bad name", False),
    (b"bad:name", False),
    (b"x-a ", False),
    (b" x-a", False),
    (b"x\ta", False),
    (b"x\x00a", False),
    (b"x\ra", False),
    (b"x\na", False),
    (b"(comment)", False),
    (b'"quoted"', False),
    (b"a/b", False),
    (b"a@b", False),
    (b"a=b", False),
    (b"a,b", False),
    (b"a;b", False),
    (b"a[b]", False),
    (b"a{b}", False),
    (b"a?b", False),
    (b"a\\b", False),
    (b"a<b>", False),
    (b"caf\xc3\xa9", False),  # non-ASCII
    (b"x\x7f", False),
]


@pytest.mark.parametrize(("name", "ok"), NAME_CASES)
def test_valid_header_name(name: bytes, ok: bool) -> None:
    assert valid_header_name(name) is ok


def test_valid_header_name_is_exactly_tchar() -> None:
    for b in range(256):
        assert valid_header_name(bytes([b])) is (b in TCHAR), b


# -- field values: RFC 9110 section 5.5 ------------------------------------------------------------
VALUE_CASES = [
    (b"", True),
    (b"plain", True),
    (b"with space and\ttab", True),
    (b"obs-text \x80\xff", True),  # obs-text is allowed in field values
    (b'quoted "string", (comment); a=b', True),
    (b"a\rb", False),
    (b"a\nb", False),
    (b"a\r\nInjected: 1", False),  # header injection / response splitting
    (b"a\x00b", False),
    (b"\r\n", False),
]


@pytest.mark.parametrize(("value", "ok"), VALUE_CASES)
def test_valid_header_value(value: bytes, ok: bool) -> None:
    assert valid_header_value(value) is ok


@given(st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_valid_header_value_never_lets_a_line_break_through(value: bytes) -> None:
    # What the function promises whatever else it allows: a valid value can't end the header line.
    if valid_header_value(value):
        assert not set(value) & {0, 10, 13}


def test_hop_by_hop_response_headers() -> None:
    # RFC 9110 section 7.6.1: connection-specific fields are not forwarded.
    assert {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"} <= set(
        HOP_BY_HOP_RESPONSE
    )
    assert all(n == n.lower() for n in HOP_BY_HOP_RESPONSE)


# -- chunks ------------------------------------------------------------------------------------------
CHUNKS = [
    (b"a", b"1\r\na\r\n"),
    (b"hello", b"5\r\nhello\r\n"),
    (b"x" * 15, b"f\r\n" + b"x" * 15 + b"\r\n"),
    (b"x" * 16, b"10\r\n" + b"x" * 16 + b"\r\n"),
    (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
    (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n"),  # data that looks like framing stays data
]


@pytest.mark.parametrize(("data", "wire"), CHUNKS)
def test_encode_chunk(data: bytes, wire: bytes) -> None:
    assert encode_chunk(data) == wire


def test_last_chunk() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_empty_chunk_is_not_the_last_chunk() -> None:
    # A zero-size chunk ends the message (RFC 9112 section 7.1): an empty read must not be encoded
    # as one, or the peer sees the body end early and what follows as the next message.
    assert encode_chunk(b"") == b""


@given(st.lists(st.binary(max_size=300), max_size=6))
@settings(max_examples=200, deadline=None)
def test_chunks_decode_back(pieces: list[bytes]) -> None:
    """What we encode, an independent HTTP/1.1 implementation (h11) decodes to the same bytes."""
    wire = b"".join(encode_chunk(p) for p in pieces) + LAST_CHUNK
    c = h11.Connection(h11.CLIENT)
    c.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    c.send(h11.EndOfMessage())
    c.receive_data(encode_response_head(200, [(b"transfer-encoding", b"chunked")]) + wire)
    assert isinstance(c.next_event(), h11.Response)
    got = b""
    while True:
        ev = c.next_event()
        if isinstance(ev, h11.EndOfMessage):
            break
        assert isinstance(ev, h11.Data)
        got += ev.data
    assert got == b"".join(pieces)
    assert c.next_event() is h11.PAUSED or c.their_state is h11.DONE


# -- request framing and parse errors (the policy protocol.py applies to llhttp's verdicts) ----------
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"chunked", True),
        (b"Chunked", True),
        (b"CHUNKED", True),
        (b" chunked\t", True),
        (b"gzip, chunked", False),  # llhttp accepts this list; Envoy answers 501
        (b"chunked, chunked", False),
        (b"chunked, gzip", False),
        (b"gzip", False),
        (b"identity", False),
        (b"", False),
        (b"chunked;q=1", False),
    ],
)
def test_chunked_only(value: bytes, ok: bool) -> None:
    assert chunked_only(value) is ok


class _Sink:
    def on_header(self, name: bytes, value: bytes) -> None:
        return None


# Real llhttp verdicts, so an httptools upgrade that rewords its reasons fails here, not in production.
PARSE_ERRORS = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
    (b"GET / HTTP/2.7\r\nHost: a\r\n\r\n", 426),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 426),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),  # Envoy: 400, not 426
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
]


@pytest.mark.parametrize(("raw", "status"), PARSE_ERRORS)
def test_status_for_parse_error(raw: bytes, status: int) -> None:
    parser = httptools.HttpRequestParser(_Sink())
    with pytest.raises(httptools.HttpParserError) as exc:
        parser.feed_data(raw)
    assert status_for_parse_error(str(exc.value)) == status
