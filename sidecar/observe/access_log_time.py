"""%START_TIME% and %START_TIME(fmt)%: Envoy's DateFormatter, compiled once per command.

Envoy formats with absl::FormatTime in UTC plus its own specifiers: `%s` (seconds since the
epoch), `%f` (9 fraction digits) and `%1f`..`%9f` (that many, truncated); absl adds `%E<n>S`
(seconds with n fraction digits), `%E*S`, `%E<n>f`, `%E*f` and `%Ez`.  Everything else is
strftime.  The default (no argument) is `%Y-%m-%dT%H:%M:%E3SZ`, e.g. 2016-04-15T20:17:00.310Z.

Pure: the time comes in as integer nanoseconds since the epoch; the strftime part is cached per
second (Envoy caches it the same way)."""

from __future__ import annotations

import re
from calendar import timegm
from time import gmtime, strftime
from typing import Any

DEFAULT_START_TIME = "%Y-%m-%dT%H:%M:%E3SZ"

# The specifiers this module expands itself (before strftime sees the rest).
_SPECIAL = re.compile(r"%%|%s|%([1-9])?f|%E([0-9*])S|%E([0-9*])f|%Ez")


def _fraction(ns: int, digits: int) -> str:
    return f"{ns:09d}"[:digits]


def _star(ns: int) -> str:
    return f"{ns:09d}".rstrip("0")


class StartTimeFormat:
    """A compiled START_TIME format: strftime pieces (cached per second) and fraction pieces."""

    __slots__ = ("_cache_sec", "_cache_text", "_last_key", "_last_text", "pieces", "quantum")

    def __init__(self, fmt: str) -> None:
        # Each piece: ("t", strftime text) or ("f", digits) or ("S", digits or -1) or ("s", 0).
        pieces: list[tuple[str, str | int]] = []
        pos = 0
        for m in _SPECIAL.finditer(fmt):
            if m.start() > pos:
                pieces.append(("t", fmt[pos : m.start()]))
            tok = m.group(0)
            if tok == "%%":
                pieces.append(("t", "%%"))
            elif tok == "%s":
                pieces.append(("s", 0))
            elif tok == "%Ez":
                pieces.append(("t", "+00:00"))  # UTC, RFC 3339 offset
            elif tok.startswith("%E") and tok.endswith("S"):
                d = m.group(2)
                pieces.append(("S", -1 if d == "*" else int(d)))
            elif tok.startswith("%E"):
                d = m.group(3)
                pieces.append(("f", -1 if d == "*" else int(d)))
            else:
                pieces.append(("f", int(m.group(1) or 9)))
            pos = m.end()
        if pos < len(fmt):
            pieces.append(("t", fmt[pos:]))
        self.pieces = tuple(pieces)
        self._cache_sec = -1
        self._cache_text: tuple[str, ...] = ()
        # The whole text only changes every `quantum` ns (1 ms for the default's %E3S): requests in
        # the same millisecond reuse the last one.
        digits = 0
        for kind, v in pieces:
            if kind in ("f", "S"):
                assert isinstance(v, int)
                digits = max(digits, 9 if v < 0 else v)
        self.quantum = 10 ** (9 - digits)
        self._last_key = -1
        self._last_text = ""

    def render_record(self, rec: Any) -> str:
        return self.render(rec.start_ns)

    def render(self, ns_epoch: int) -> str:
        key = ns_epoch // self.quantum
        if key == self._last_key:
            return self._last_text
        text = self._render(ns_epoch)
        self._last_key = key
        self._last_text = text
        return text

    def _render(self, ns_epoch: int) -> str:
        sec, ns = divmod(ns_epoch, 1_000_000_000)
        if sec != self._cache_sec:
            tm = gmtime(sec)
            self._cache_text = tuple(strftime(str(v), tm) if k == "t" else "" for k, v in self.pieces)
            self._cache_sec = sec
        out: list[str] = []
        for (kind, v), text in zip(self.pieces, self._cache_text, strict=True):
            if kind == "t":
                out.append(text)
            elif kind == "s":
                out.append(str(sec))
            elif kind == "f":
                assert isinstance(v, int)
                out.append(_star(ns) or "0" if v < 0 else _fraction(ns, v))
            else:
                assert isinstance(v, int)
                s = f"{sec % 60:02d}"
                if v < 0:
                    frac = _star(ns)
                    out.append(f"{s}.{frac}" if frac else s)
                else:
                    out.append(f"{s}.{_fraction(ns, v)}" if v else s)
        return "".join(out)


def compile_start_time(arg: str) -> StartTimeFormat:
    return StartTimeFormat(arg or DEFAULT_START_TIME)


def epoch_seconds(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Seconds since the epoch for a UTC date (for tests and fixed records)."""
    return timegm((year, month, day, hour, minute, second, 0, 0, 0))
