"""A dict-backed model.route.RequestView for matcher and table tests."""

from __future__ import annotations


class Req:
    """Header names are lowercased; a list value stands for repeated headers (joined with ',')."""

    __slots__ = ("_headers",)

    def __init__(self, headers: dict[str, str | list[str]] | None = None, **pseudo: str) -> None:
        self._headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            self._headers[name.lower()] = ",".join(value) if isinstance(value, list) else value
        for name, value in pseudo.items():
            self._headers[":" + name] = value

    def header(self, name: str) -> str | None:
        return self._headers.get(name)
