"""The timeout arithmetic of http/timeouts.py: header integers as absl::SimpleAtoi reads them, the
grpc-timeout header both ways, FilterUtility::finalTimeout / setTimeoutHeaders, and a route's
max_stream_duration (refreshDurationTimeout)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.timeouts import (
    GRPC_TIMEOUT_MAX,
    UINT64_MAX,
    expected_timeout_ms,
    final_timeouts,
    format_grpc_timeout,
    grpc_timeout_ms,
    parse_int,
    stream_duration_ms,
)
from sidecar.model.route import MaxStreamDuration


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"200", 200),
        (b" +300 ", 300),
        (b"\t7\t", 7),
        (b"0", 0),
        (b"-1", None),  # unsigned
        (b"-0", None),
        (b"abc", None),
        (b"", None),
        (b"+", None),
        (b"1 2", None),
        (b"1.5", None),
        (b"18446744073709551615", UINT64_MAX),
        (b"18446744073709551616", None),  # overflow
        (b"\xd9\xa3", None),  # an Arabic-Indic digit is not an ASCII digit
    ],
)
def test_parse_int_is_simple_atoi(raw: bytes, value: int | None) -> None:
    assert parse_int(raw) == value


def test_parse_int_signed() -> None:
    assert parse_int(b"-5", 100, signed=True) == -5
    assert parse_int(b"-101", 100, signed=True) == -101
    assert parse_int(b"-102", 100, signed=True) is None


@given(st.integers(0, UINT64_MAX), st.sampled_from(["", " ", "\t", " \t"]), st.sampled_from(["", "+"]))
def test_parse_int_reads_what_it_is_given(n: int, space: str, sign: str) -> None:
    assert parse_int(f"{space}{sign}{n}{space}".encode()) == n


@given(st.binary(max_size=12))
def test_parse_int_never_raises(raw: bytes) -> None:
    v = parse_int(raw)
    assert v is None or 0 <= v <= UINT64_MAX


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        (b"300m", 300),
        (b"2S", 2000),
        (b"3M", 180_000),
        (b"1H", 3_600_000),
        (b"1500u", 2),  # rounded up
        (b"1000u", 1),
        (b"1n", 1),
        (b"0m", 0),
        (b"99999999m", 99_999_999),
        (b"100000000m", None),  # more than 8 digits
        (b"-1m", None),
        (b"5", None),  # no unit
        (b"5x", None),
        (b"m", None),
        (b"", None),
        (None, None),
        (b" 5 m", 5),  # SimpleAtoi takes the spaces around the value
    ],
)
def test_grpc_timeout(raw: bytes | None, ms: int | None) -> None:
    assert grpc_timeout_ms(raw) == ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (200, b"200m"),
        (0, b"0m"),
        (GRPC_TIMEOUT_MAX, b"99999999m"),
        (GRPC_TIMEOUT_MAX + 1, b"100000S"),
        (10**13, b"2777777H"),  # seconds, then minutes, then hours
        (10**30, b"99999999H"),  # clipped
    ],
)
def test_format_grpc_timeout(ms: int, text: bytes) -> None:
    assert format_grpc_timeout(ms) == text


@given(st.integers(0, 10**25))
def test_formatted_grpc_timeout_reads_back_no_longer(ms: int) -> None:
    back = grpc_timeout_ms(format_grpc_timeout(ms))
    assert back is not None and back <= ms
    if ms <= GRPC_TIMEOUT_MAX:
        assert back == ms


@pytest.mark.parametrize(
    ("route", "per_try", "expected", "upstream", "per_try_h", "respect", "result"),
    [
        (15000, 0, None, None, None, False, (15000, 0, False)),
        (15000, 0, None, b"200", None, False, (200, 0, True)),
        (15000, 0, None, b"abc", None, False, (15000, 0, True)),  # ignored, still consumed
        (15000, 0, None, b"0", None, False, (0, 0, True)),
        (15000, 0, None, None, b"150", False, (15000, 150, False)),
        (15000, 0, None, b"300", b"300", False, (300, 0, True)),  # per-try not below: dropped
        (0, 0, None, None, b"300", False, (0, 300, False)),  # no global: any per-try stays
        (15000, 20000, None, None, None, False, (15000, 0, False)),
        (15000, 0, b"777", b"200", None, False, (200, 0, True)),  # expected ignored without respect
        (15000, 0, b"777", b"200", None, True, (777, 0, False)),  # respect: expected wins, rq left
        (15000, 0, b"x", b"200", None, True, (15000, 0, False)),
        (15000, 0, None, b"200", None, True, (200, 0, True)),
        (15000, 100, None, None, b"", False, (15000, 100, False)),  # empty per-try header: no change
    ],
)
def test_final_timeouts(
    route: int,
    per_try: int,
    expected: bytes | None,
    upstream: bytes | None,
    per_try_h: bytes | None,
    respect: bool,
    result: tuple[int, int, bool],
) -> None:
    assert final_timeouts(route, per_try, expected, upstream, per_try_h, respect) == result


@pytest.mark.parametrize(
    ("global_ms", "per_try", "elapsed", "hedging", "announced"),
    [
        (15000, 0, 0, False, 15000),
        (15000, 150, 0, False, 150),
        (15000, 150, 0, True, 15000),  # hedging: the attempt may use the whole timeout
        (15000, 0, 1, False, 14999),
        (500, 200, 100, False, 200),
        (500, 200, 400, False, 100),
        (500, 200, 500, False, 1),  # out of time, but 0 would mean none
        (500, 200, 900, False, 1),
        (0, 0, 0, False, 0),
        (0, 150, 10_000, False, 150),
    ],
)
def test_expected_timeout(global_ms: int, per_try: int, elapsed: int, hedging: bool, announced: int) -> None:
    assert expected_timeout_ms(global_ms, per_try, elapsed, hedging) == announced


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_expected_timeout_never_outlives_the_global_one(g: int, per_try: int, elapsed: int) -> None:
    e = expected_timeout_ms(g, per_try, elapsed)
    assert e >= 0
    if g and (per_try or g):
        assert 1 <= e <= max(1, g - elapsed)
    if not g:
        assert e == per_try


M = MaxStreamDuration


@pytest.mark.parametrize(
    ("route", "hcm", "grpc", "duration"),
    [
        (M(max_stream_duration=0.3), 0, None, 300),
        (M(max_stream_duration=0.0), 400, None, None),  # 0 switches the HCM's off
        (M(), 400, None, 400),  # only grpc fields: the HCM's
        (M(), 0, None, None),
        (M(max_stream_duration=0.3), 0, 100, 300),  # no grpc_timeout_header_max: the header is moot
        (M(grpc_timeout_header_max=0.5, grpc_timeout_header_offset=0.1), 0, 300, 200),
        (M(grpc_timeout_header_max=0.5, grpc_timeout_header_offset=0.1), 0, 2000, 400),
        (M(grpc_timeout_header_max=0.0), 0, 400, 400),  # no cap
        (M(grpc_timeout_header_max=0.0), 0, 0, 0),  # a timer that fires at once
        (M(grpc_timeout_header_max=1.0, grpc_timeout_header_offset=0.5), 0, 500, 0),
        (M(grpc_timeout_header_max=1.0, grpc_timeout_header_offset=0.5), 0, 400, 0),
        (M(grpc_timeout_header_max=1.0, grpc_timeout_header_offset=0.5), 0, 0, 0),
        (M(grpc_timeout_header_max=1.0, max_stream_duration=5.0), 0, None, 5000),
    ],
)
def test_stream_duration(route: MaxStreamDuration, hcm: int, grpc: int | None, duration: int | None) -> None:
    assert stream_duration_ms(route, hcm, grpc) == duration
