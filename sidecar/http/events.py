"""What a codec hands the connection manager: request and response heads.

Header names are lowercase `bytes`, values `bytes`, in arrival order; a list of pairs (not a dict)
because order and repeats are part of what the upstream must see (Envoy's HeaderMap keeps both)."""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


def first_value(headers: Headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def joined_value(headers: Headers, name: str) -> str | None:
    """All values of `name` joined with ',' (as Envoy's header matchers see a repeated header)."""
    key = name.encode("latin-1")
    found = [v for k, v in headers if k == key]
    return b",".join(found).decode("latin-1") if found else None


def each_value(headers: Headers, name: str) -> list[str] | None:
    key = name.encode("latin-1")
    found = [v.decode("latin-1") for k, v in headers if k == key]
    return found or None


class RequestHead:
    """A request head.  Implements model.route.RequestView for route matching."""

    __slots__ = ("authority", "headers", "keep_alive", "method", "path", "scheme", "version")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        version: bytes,
        headers: Headers,
        authority: bytes,
        keep_alive: bool,
        scheme: bytes = b"http",
    ) -> None:
        self.method = method
        self.path = path
        self.version = version  # b"1.1" or b"1.0"
        self.headers = headers  # without host: `authority` carries it (Envoy's :authority)
        self.authority = authority
        self.keep_alive = keep_alive
        self.scheme = scheme

    def get(self, name: bytes) -> bytes | None:
        return first_value(self.headers, name)

    def header(self, name: str) -> str | None:
        """RequestView: pseudo-headers answered; several values joined with ','."""
        if name[0] == ":":
            if name == ":authority":
                return self.authority.decode("latin-1")
            if name == ":method":
                return self.method.decode("latin-1")
            if name == ":path":
                return self.path.decode("latin-1")
            if name == ":scheme":
                return self.scheme.decode("latin-1")
            return None
        if name == "host":
            return self.authority.decode("latin-1")
        return joined_value(self.headers, name)

    def header_values(self, name: str) -> list[str] | None:
        """routing.matchers.MultiValueRequestView: the values of a repeated header one by one
        (Envoy 1.40 matches them value by value).  Only asked when header() holds a ','."""
        return each_value(self.headers, name)

    def remove(self, name: bytes) -> None:
        self.headers = [h for h in self.headers if h[0] != name]

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every value of `name` with one (appended when absent)."""
        hs = self.headers
        for i, (k, _) in enumerate(hs):
            if k == name:
                hs[i] = (name, value)
                rest = hs[i + 1 :]
                for h in rest:
                    if h[0] == name:
                        self.headers = hs[: i + 1] + [h for h in rest if h[0] != name]
                        break
                return
        hs.append((name, value))


class ResponseHead:
    """A response head; implements model.route.RequestView (header matchers run on it for
    retry_policy.retriable_headers)."""

    __slots__ = ("headers", "reason", "status")

    def __init__(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.reason = reason

    def get(self, name: bytes) -> bytes | None:
        return first_value(self.headers, name)

    def header(self, name: str) -> str | None:
        if name == ":status":
            return str(self.status)
        return joined_value(self.headers, name)

    def header_values(self, name: str) -> list[str] | None:
        return each_value(self.headers, name)
