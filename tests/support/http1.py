"""A careful, blocking HTTP/1.1 client for tests: build raw requests byte for byte, send them, and
read back complete responses (status, header list in order, body, trailers, interim 1xx) under a
deadline.  It reads what is on the wire instead of fixing it up, so tests can see framing (chunked or
Content-Length or close-delimited) and whether the server closed the connection.

Response body length follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; chunked
when Transfer-Encoding ends in chunked; else Content-Length; else read until close."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

Header = tuple[str, str]


class ReadTimeout(TimeoutError):
    """The deadline passed before a complete response arrived; `partial` holds what did arrive."""

    def __init__(self, what: str, partial: bytes) -> None:
        super().__init__(f"timed out reading {what}; got {partial[:2000]!r}")
        self.partial = partial


class PeerClosed(ConnectionError):
    """The server closed the connection before a complete response; `partial` holds what arrived."""

    def __init__(self, what: str, partial: bytes) -> None:
        super().__init__(f"connection closed while reading {what}; got {partial[:2000]!r}")
        self.partial = partial


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[Header]
    body: bytes = b""
    framing: str = "none"  # "content-length" | "chunked" | "close" | "none"
    trailers: list[Header] = field(default_factory=list)
    interim: list[Response] = field(default_factory=list)  # 1xx responses before this one

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(
    method: str = "GET",
    target: str = "/",
    host: str | None = "example.com",
    headers: list[Header] | tuple[Header, ...] = (),
    body: bytes | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """Raw bytes of a request.  Adds `Host` (unless host is None) and, for a body without an explicit
    Content-Length or Transfer-Encoding, a Content-Length."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    names = {k.lower() for k, _ in headers}
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(*chunks: bytes, trailers: tuple[Header, ...] = ()) -> bytes:
    """A chunked message body: each chunk framed, then the last chunk and trailers."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in trailers) + b"\r\n"


class Client:
    """One TCP connection to `port` on loopback with a read buffer, so that pipelined responses can be
    read one after the other.  Use as a context manager."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False  # the peer closed its side (FIN or RST)
        self.reset = False  # ... and it was a RST

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    # -- low-level reads -------------------------------------------------------------------------
    def _fill(self, deadline: float, what: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout(what, bytes(self.buf))
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise ReadTimeout(what, bytes(self.buf)) from None
        except ConnectionResetError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            raise PeerClosed(what, bytes(self.buf))
        self.buf += data

    def _read_until(self, sep: bytes, deadline: float, what: str, limit: int = 1 << 20) -> bytes:
        for _ in range(1_000_000):  # bounded: each pass reads more or raises
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"{what} longer than {limit} bytes")
            self._fill(deadline, what)
        raise AssertionError("unreachable")

    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        for _ in range(1_000_000):
            if len(self.buf) >= n:
                out = bytes(self.buf[:n])
                del self.buf[:n]
                return out
            self._fill(deadline, what)
        raise AssertionError("unreachable")

    def read_until_close(self, timeout: float | None = None) -> bytes:
        """Everything until the peer closes; ReadTimeout if it does not within `timeout`."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            for _ in range(1_000_000):
                self._fill(deadline, "until close")
        except PeerClosed:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_some(self, timeout: float | None = None) -> bytes:
        """What is buffered or arrives next (at least one byte); b"" at EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if not self.buf and not self.eof:
            try:
                self._fill(deadline, "some bytes")
            except PeerClosed:
                return b""
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_closed(self, timeout: float = 2.0) -> bool:
        """True if the peer closes (FIN or RST) within `timeout`, False if the connection stays open.
        Bytes that arrive meanwhile stay in the buffer."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        try:
            for _ in range(1_000_000):
                self._fill(deadline, "close")
        except PeerClosed:
            return True
        except ReadTimeout:
            return False
        return False

    # -- responses ---------------------------------------------------------------------------------
    def read_response(self, method: str = "GET", timeout: float | None = None) -> Response:
        """Read one complete final response (1xx responses before it go to `.interim`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        interim: list[Response] = []
        for _ in range(100):  # bounded number of 1xx responses
            resp = self._read_head(deadline)
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            self._read_body(resp, method, deadline)
            resp.interim = interim
            return resp
        raise ValueError("too many 1xx responses")

    def read_interim(self, timeout: float | None = None) -> Response:
        """Read one response head that must be 1xx (e.g. `100 Continue`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        resp = self._read_head(deadline)
        if not 100 <= resp.status < 200:
            self._read_body(resp, "GET", deadline)
        return resp

    def _read_head(self, deadline: float) -> Response:
        head = self._read_until(b"\r\n\r\n", deadline, "response head")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        headers: list[Header] = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ValueError(f"bad response header line {line!r}")
            headers.append((name, value.strip(" \t")))
        return Response(version, int(code), reason, headers)

    def _read_body(self, resp: Response, method: str, deadline: float) -> None:
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return
        te = ",".join(resp.header_all("transfer-encoding")).lower()
        if te.replace(" ", "").split(",")[-1] == "chunked":
            resp.framing = "chunked"
            body = bytearray()
            for _ in range(1_000_000):
                size_line = self._read_until(b"\r\n", deadline, "chunk size")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                body += self._read_exact(size, deadline, "chunk data")
                if self._read_exact(2, deadline, "chunk end") != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
            for _ in range(1000):
                line = self._read_until(b"\r\n", deadline, "trailers")
                if line == b"\r\n":
                    break
                name, _, value = line[:-2].decode("latin-1").partition(":")
                resp.trailers.append((name, value.strip(" \t")))
            resp.body = bytes(body)
        elif (cl := resp.header("content-length")) is not None:
            resp.framing = "content-length"
            resp.body = self._read_exact(int(cl), deadline, "body")
        else:
            resp.framing = "close"
            remaining = max(0.0, deadline - time.monotonic())
            resp.body = self.read_until_close(remaining)

    def exchange(self, raw: bytes, method: str | None = None, timeout: float | None = None) -> Response:
        """Send `raw` and read one response (the method is read from `raw` unless given)."""
        self.send(raw)
        return self.read_response(method or raw.split(b" ", 1)[0].decode("latin-1"), timeout)


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> Response:
    """Open a connection, send `raw`, read one response, close."""
    with Client(port, timeout=timeout) as c:
        return c.exchange(raw)
