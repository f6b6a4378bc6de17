"""http/b3.py: Zipkin B3 extraction, span choice and injection, against what Envoy 1.40 was observed
to put on the upstream request (the shapes in the module docstring)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http import b3

T = "80f198ee56343ba864fe8b2a57d3eff7"
S = "e457b5a2e4d86bd1"
P = "05e3ac9a4f6e3b90"


def _rand() -> Callable[[], int]:
    counter = itertools.count(0x1111111111111111, 0x1111111111111111)
    return lambda: next(counter)


def _run(
    headers: dict[str, str],
    traced: bool = False,
    egress: bool = False,
    shared: bool = False,
    wide: bool = True,
) -> dict[str, str]:
    hs = {k.encode(): v.encode() for k, v in headers.items()}
    out = b3.propagate(hs.get, traced, egress, shared, wide, _rand())
    return {k.decode(): v.decode() for k, v in out}


def test_new_root_128_bit_span_is_the_low_half() -> None:
    got = _run({})
    assert got == {
        "x-b3-traceid": "2222222222222222" + "1111111111111111",
        "x-b3-spanid": "1111111111111111",
        "x-b3-sampled": "0",
    }
    assert _run({}, traced=True, wide=False) == {
        "x-b3-traceid": "1111111111111111",
        "x-b3-spanid": "1111111111111111",
        "x-b3-sampled": "1",
    }


@pytest.mark.parametrize(
    ("egress", "shared", "span", "parent"),
    [
        (False, False, "1111111111111111", S),  # a new server span, child of the client's
        (True, True, "1111111111111111", S),  # egress: always a client child span
        (False, True, S, P),  # shared span context: the client's ids reused
    ],
)
def test_incoming_context(egress: bool, shared: bool, span: str, parent: str) -> None:
    got = _run(
        {"x-b3-traceid": T.upper(), "x-b3-spanid": S, "x-b3-parentspanid": P, "x-b3-sampled": "1"},
        egress=egress,
        shared=shared,
    )
    assert got == {"x-b3-traceid": T, "x-b3-spanid": span, "x-b3-parentspanid": parent, "x-b3-sampled": "1"}


def test_shared_without_parent_writes_none() -> None:
    got = _run({"x-b3-traceid": "abc", "x-b3-spanid": "12"}, shared=True)
    assert got == {"x-b3-traceid": "0000000000000abc", "x-b3-spanid": "0000000000000012", "x-b3-sampled": "0"}


@pytest.mark.parametrize(
    ("value", "expected"), [("1", "1"), ("true", "1"), ("0", "0"), ("d", "0"), ("x", "0")]
)
def test_sampled_header_overrides_the_decision(value: str, expected: str) -> None:
    assert _run({"x-b3-sampled": value}, traced=True)["x-b3-sampled"] == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"x-b3-traceid": "zz", "x-b3-spanid": S},
        {"x-b3-traceid": T + "00", "x-b3-spanid": S},
        {"x-b3-traceid": T, "x-b3-spanid": S + "00"},
        {"x-b3-traceid": T, "x-b3-spanid": S, "x-b3-parentspanid": "zz"},
        {"b3": T},
        {"b3": f"{T}-{S}-x"},
        {"b3": f"{T}-{S}-1-zz"},
        {"b3": f"{T}-{S}-true"},
        {"b3": "abc-12-1"},
        {"b3": "x"},
        {"x-b3-traceid": "-1", "x-b3-spanid": S},
        {"x-b3-traceid": T, "x-b3-spanid": "+1"},
    ],
)
def test_malformed_context_adds_nothing(headers: dict[str, str]) -> None:
    assert _run(headers) == {}


def test_lone_trace_id_or_parent_is_a_new_root() -> None:
    assert _run({"x-b3-traceid": T})["x-b3-spanid"] == "1111111111111111"
    assert "x-b3-parentspanid" not in _run({"x-b3-parentspanid": P})


@pytest.mark.parametrize(
    ("value", "shared", "expected"),
    [
        (f"{T}-{S}-1-{P}", False, f"{T}-1111111111111111-1-{S}"),
        (f"{T}-{S}-1-{P}", True, f"{T}-{S}-1-{P}"),
        (f"{T}-{S}", False, f"{T}-1111111111111111-0-{S}"),
        (f"{T}-{S}", True, f"{T}-{S}-0"),
        (f"{T[16:]}-{S}-d", True, f"{T[16:]}-{S}-1"),
        ("0", False, "22222222222222221111111111111111-1111111111111111-0"),
        ("d", False, "22222222222222221111111111111111-1111111111111111-1"),
    ],
)
def test_single_header_is_rewritten_alone(value: str, shared: bool, expected: str) -> None:
    got = _run({"b3": value, "x-b3-traceid": S, "x-b3-spanid": P}, shared=shared)
    assert got == {"b3": expected}  # x-b3-* pass untouched when b3 is present


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_strtoull_round_trip(n: int) -> None:
    assert b3.strtoull16(b"%x" % n) == n
    assert b3.strtoull16(b"%016X" % n) == n
    assert b3.strtoull16(b"0x%x" % n) == n


@given(st.binary(max_size=24))
def test_strtoull_accepts_only_c_hex(text: bytes) -> None:
    digits = text.strip(b" \t\n\v\f\r")
    digits = digits[2:] if digits[:2].lower() == b"0x" and len(digits) > 2 else digits
    try:
        value = b3.strtoull16(text)
    except b3.Invalid:
        ok = bool(digits) and all(chr(c) in "0123456789abcdefABCDEF" for c in digits)
        assert not ok or int(digits, 16) >= 1 << 64
        return
    assert 0 <= value < 1 << 64
    assert int(digits, 16) == value


@given(
    st.integers(min_value=1, max_value=(1 << 64) - 1),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.sampled_from("01d"),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
)
def test_single_header_parse(high: int, low: int, span: int, flag: str, parent: int) -> None:
    value = b"%016x%016x-%016x-%s-%016x" % (high, low, span, flag.encode(), parent)
    ctx = b3.extract({b"b3": value}.get, b3.sampled({b"b3": value}.get, False))
    assert ctx == b3.Context(high, low, span, parent, flag != "0")
    assert b3.inject(b3.start_span(ctx, ctx.sampled, False, True, True, _rand()), True) == [
        (b"b3", value.replace(b"-d-", b"-1-") if parent else value.replace(b"-d-", b"-1-")[:-17])
    ]


@given(
    st.dictionaries(
        st.sampled_from([b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled"]),
        st.binary(max_size=70),
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_any_headers_give_well_formed_output(
    hs: dict[bytes, bytes], traced: bool, egress: bool, shared: bool, wide: bool
) -> None:
    out = dict(b3.propagate(hs.get, traced, egress, shared, wide, _rand()))
    if b"b3" in hs:
        assert set(out) <= {b"b3"}
    else:
        assert not out or {b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled"} <= set(out)
        for k, v in out.items():
            assert len(v) in ((1,) if k == b"x-b3-sampled" else (16, 32))
            int(v, 16)
