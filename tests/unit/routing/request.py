"""Dict-backed model.route.RequestView implementations for matcher and table tests."""

from __future__ import annotations

from collections.abc import Mapping


class JoinedReq:
    """Only `header()`: repeated headers (a list value) come back joined with ','."""

    __slots__ = ("_values",)

    def __init__(self, headers: Mapping[str, str | list[str]] | None = None, **pseudo: str) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in (headers or {}).items():
            self._values.setdefault(name.lower(), []).extend([value] if isinstance(value, str) else value)
        for name, value in pseudo.items():
            self._values[":" + name] = [value]

    def header(self, name: str) -> str | None:
        values = self._values.get(name)
        return None if values is None else ",".join(values)


class Req(JoinedReq):
    """Also answers `header_values()` (matchers.MultiValueRequestView), as the codecs' heads do."""

    __slots__ = ()

    def header_values(self, name: str) -> list[str] | None:
        return self._values.get(name)
