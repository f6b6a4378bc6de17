"""What the connection manager does to every request head before routing: Envoy's
ConnectionManagerUtility::mutateRequestHeaders, for HTTP/1.

- x-forwarded-for: with `use_remote_address` the peer is appended (a peer on loopback is replaced by
  this host's own address, Network::Utility::getLocalAddress); without it the header is left alone.
- x-forwarded-proto: set to the connection's scheme at the edge, kept (or set when absent) inside.
- Internal or external (`classify`): without internal_address_config (Envoy 1.40's default) no
  request is internal.  With it, a request is internal when its one trusted address is: with
  `use_remote_address` the peer, if the request carries no x-forwarded-for; without it the single
  address of x-forwarded-for (none, several or a malformed one make the request external).
  Internal requests get `x-envoy-internal: true` and keep Envoy's control headers, which the router
  then obeys (x-envoy-retry-on, x-envoy-upstream-rq-timeout-ms, ...).  External requests lose them
  (ConnectionManagerUtility::cleanInternalHeaders) and the route configuration's
  internal_only_headers; at the edge (use_remote_address and external) they also lose the
  downstream-service headers and get x-envoy-external-address = the peer.
- x-request-id: generated when absent; replaced at the edge unless preserve_external_request_id.
- Connection-nominated and hop-by-hop headers are dropped (RFC 9110 section 7.6.1); `te` survives as
  "trailers" when it lists trailers.
- x-forwarded-client-cert per forward_client_cert_details (the rules in http/xfcc.py; the facts
  about the TLS connection are read here, once per connection).  SANITIZE on a request without the
  header costs nothing: the header is spotted in the same pass as the others."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import random
import socket
import struct
import weakref
from functools import cache
from typing import Any

from sidecar.http import xfcc
from sidecar.http.events import Headers, RequestHead
from sidecar.model.listener import ClientCertDetails, ForwardClientCert, HttpConnectionManager
from sidecar.model.route import InternalAddressConfig

# The control headers only an internal request keeps (ConnectionManagerUtility::cleanInternalHeaders).
INTERNAL_ONLY_HEADERS = frozenset(
    {
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retriable-header-names",
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-force-trace",
        b"x-envoy-ip-tags",
        b"x-envoy-original-url",
        b"x-envoy-hedge-on-per-try-timeout",
    }
)
# Removed from every request: x-envoy-internal (the connection manager decides it), and
# x-envoy-upstream-stream-duration-ms, which Envoy's router consumes (sidecar does not implement
# the upstream stream duration it asks for).
ALWAYS_REMOVED = frozenset({b"x-envoy-internal", b"x-envoy-upstream-stream-duration-ms"})
# What an external request loses.
CONTROL_HEADERS = INTERNAL_ONLY_HEADERS | ALWAYS_REMOVED
# Stripped only from edge requests (use_remote_address and external), where the peer is not another
# Envoy; x-envoy-external-address is then set to the peer.
EDGE_ONLY_HEADERS = frozenset(
    {b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node"}
)
_EDGE_STRIPPED = EDGE_ONLY_HEADERS | {b"x-envoy-external-address"}
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"http2-settings"}
)

_EDGE_NAMES = CONTROL_HEADERS | {b"x-forwarded-proto", b"x-request-id", xfcc.HEADER}
_APPEND = ForwardClientCert.APPEND_FORWARD
_SET = ForwardClientCert.SANITIZE_SET
_getrandbits = random.getrandbits


_HEX_TO_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_ID_BATCH = 512
_ids: list[bytes] = []


def _refill_request_ids() -> None:
    """Make _ID_BATCH version-4 UUIDs at once: one random draw and hexlify for the whole batch, then
    the 8-4-4-4-12 layout laid down with one extended-slice assignment per character position
    (about a tenth of formatting each id on its own, which cost half a microsecond a request)."""
    n = _ID_BATCH
    hexed = _getrandbits(128 * n).to_bytes(16 * n, "little").hex().encode()
    out = bytearray(36 * n)
    j = 0
    for pos in range(36):
        if pos in (8, 13, 18, 23):
            out[pos::36] = b"-" * n
        elif pos == 14:
            out[pos::36] = b"4" * n  # version nibble (RFC 4122 section 4.4)
            j += 1
        elif pos == 19:
            out[pos::36] = hexed[j::32].translate(_HEX_TO_VARIANT)  # variant bits 10xx
            j += 1
        else:
            out[pos::36] = hexed[j::32]
            j += 1
    text = bytes(out)
    _ids.extend([text[i : i + 36] for i in range(0, 36 * n, 36)])


# A forked worker must not hand out its parent's ids (random itself reseeds in the child).
os.register_at_fork(after_in_child=_ids.clear)


def new_request_id() -> bytes:
    """A random (version 4) UUID, as Envoy's UUIDUtils generates for x-request-id."""
    if not _ids:
        _refill_request_ids()
    return _ids.pop()


@cache
def local_address() -> bytes:
    """The first IPv4 address of the first non-loopback interface (kernel order), or 127.0.0.1:
    Envoy's Network::Utility::getLocalAddress, which stands in for a loopback peer in XFF."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            addr = socket.inet_ntoa(packed[20:24])
            if not addr.startswith("127."):
                return addr.encode()
    return b"127.0.0.1"


def _is_loopback(ip: bytes) -> bool:
    return ip.startswith(b"127.") or ip == b"::1" or ip.startswith(b"::ffff:127.")


def forwardable(headers: Headers) -> tuple[Headers, bool]:
    """Headers to forward upstream (hop-by-hop and Connection-nominated ones removed) and whether the
    request body is chunked.  Allocation-free when there is nothing to drop (the common case)."""
    drop = False
    for k, _ in headers:
        if k in HOP_BY_HOP:
            drop = True
            break
    if not drop:
        return headers, False
    nominated: set[bytes] = set()
    chunked = False
    te_trailers = False
    for k, v in headers:
        if k == b"connection":
            for tok in v.split(b","):
                tok = tok.strip().lower()
                if tok and tok not in (b"close", b"keep-alive", b"upgrade"):
                    nominated.add(tok)
        elif k == b"transfer-encoding":
            chunked = True
        elif k == b"te":
            for tok in v.split(b","):
                if tok.split(b";")[0].strip().lower() == b"trailers":
                    te_trailers = True
    out: Headers = []
    for h in headers:
        k = h[0]
        if k in HOP_BY_HOP:
            if k == b"te" and te_trailers:
                out.append((b"te", b"trailers"))
                te_trailers = False
            continue
        if k in nominated:
            continue
        out.append(h)
    return out, chunked


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def normalize_path(path: bytes) -> bytes:
    """HCM normalize_path, as Envoy's canonicalizer (chromium_url) leaves a path, before the query:
    backslashes become slashes, percent-escapes of unreserved characters are decoded (RFC 3986
    section 2.3; other escapes, valid or not, are kept as they are), then dot segments are removed
    (RFC 3986 section 5.2.4), a final "." or ".." leaving a trailing slash."""
    if not path.startswith(b"/"):
        return path
    q = path.find(b"?")
    p, rest = (path, b"") if q < 0 else (path[:q], path[q:])
    if b"\\" in p:
        p = p.replace(b"\\", b"/")
    if b"%" in p:
        out = bytearray()
        i, n = 0, len(p)
        while i < n:
            c = p[i]
            if c == 37 and i + 2 < n and p[i + 1] in _HEX and p[i + 2] in _HEX:  # "%XX"
                ch = int(p[i + 1 : i + 3], 16)
                if ch in _UNRESERVED:
                    out.append(ch)
                    i += 3
                    continue
            out.append(c)
            i += 1
        p = bytes(out)
    if b"/." in p:
        segments = p.split(b"/")[1:]
        kept: list[bytes] = []
        last = len(segments) - 1
        for i, seg in enumerate(segments):
            if seg == b"." or seg == b"..":
                if seg == b".." and kept:
                    kept.pop()
                if i == last:
                    kept.append(b"")  # "/a/b/.." -> "/a/"
                continue
            kept.append(seg)
        p = b"/" + b"/".join(kept)
    return p + rest


def merge_slashes(path: bytes) -> bytes:
    """HCM merge_slashes: runs of '/' in the path (not the query) become one (PathUtil::mergeSlashes)."""
    q = path.find(b"?")
    p, rest = (path, b"") if q < 0 else (path[:q], path[q:])
    if b"//" not in p:
        return path
    while b"//" in p:
        p = p.replace(b"//", b"/")
    return p + rest


def append_via(headers: Headers, via: bytes) -> None:
    """HCM `via`: appended to an existing Via header, else added (Utility::appendVia)."""
    for i, (k, v) in enumerate(headers):
        if k == b"via":
            headers[i] = (k, v + b", " + via)
            return
    headers.append((b"via", via))


def mutate_request_headers(
    head: RequestHead, cfg: HttpConnectionManager, peer_ip: bytes, conn: object = None
) -> bytes:
    """Apply the edge rules above to `head`; returns the request id (b"" when ids are off).  `conn`
    is the downstream connection (its TLS facts feed x-forwarded-client-cert)."""
    if cfg.normalize_path:
        head.path = normalize_path(head.path)
    if cfg.merge_slashes:
        head.path = merge_slashes(head.path)
    if cfg.via:
        append_via(head.headers, cfg.via.encode())
    headers = head.headers
    # One pass: find x-forwarded-proto / x-request-id, and whether any control header must go.
    xfp = rid = None
    control = cert_header = False
    for k, v in headers:
        if k in _EDGE_NAMES:  # one hash lookup per header; most headers are none of these
            if k == b"x-forwarded-proto":
                xfp = v
            elif k == b"x-request-id":
                rid = v
            elif k == xfcc.HEADER:
                cert_header = True
            else:
                control = True
    if cert_header or (mode := cfg.forward_client_cert_details) is _APPEND or mode is _SET:
        forward_client_cert(head, cfg, conn)
        headers = head.headers
    if control:
        # Every request is external here (no internal_address_config): the control headers go.
        headers = head.headers = [h for h in headers if h[0] not in CONTROL_HEADERS]
    edge = cfg.use_remote_address
    if edge:
        for k, _ in headers:
            if k in _EDGE_STRIPPED:
                headers = head.headers = [h for h in headers if h[0] not in _EDGE_STRIPPED]
                break
        if not cfg.skip_xff_append:
            appended = local_address() if _is_loopback(peer_ip) else peer_ip
            xff = head.get(b"x-forwarded-for")
            if xff is None:
                headers.append((b"x-forwarded-for", appended))
            else:
                head.set(b"x-forwarded-for", xff + b"," + appended)
        head.set(b"x-forwarded-proto", head.scheme)
        headers = head.headers
        headers.append((b"x-envoy-external-address", peer_ip))
    elif xfp is None:
        headers.append((b"x-forwarded-proto", head.scheme))
    if not cfg.generate_request_id:
        return rid or b""
    if rid is None:
        rid = new_request_id()
        headers.append((b"x-request-id", rid))
    elif edge and not cfg.preserve_external_request_id:
        rid = new_request_id()
        head.set(b"x-request-id", rid)
    return rid


# --- internal requests (only with internal_address_config) --------------------------------------

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_CACHE_SIZE = 1024
_XFF_SPACE = b" \t\f\v\n\r"  # StringUtil::ltrim/rtrim


def _legacy_internal(ip: _IP) -> bool:
    """Network::Utility::isInternalAddress: RFC 1918 IPv4 and exactly 127.0.0.1; IPv6 fd00::/8
    (the locally assigned half of RFC 4193) and ::1."""
    if ip.version == 4:
        b = ip.packed
        return b[0] == 10 or (b[0] == 192 and b[1] == 168) or (b[0] == 172 and 16 <= b[1] <= 31) or b == b"\x7f\0\0\x01"
    return ip.packed[0] == 0xFD or int(ip) == 1


class InternalAddresses:
    """The compiled internal_address_config of one connection manager: `internal(text)` answers
    for an address as text (b"" stands for a Unix socket peer), remembering recent answers."""

    __slots__ = ("_cache", "networks", "unix_sockets")

    def __init__(self, cfg: InternalAddressConfig) -> None:
        self.unix_sockets = cfg.unix_sockets
        self.networks = tuple(ipaddress.ip_network(c) for c in cfg.cidr_ranges)
        self._cache: dict[bytes, bool] = {}

    def internal(self, addr: bytes) -> bool:
        if not addr:
            return self.unix_sockets
        known = self._cache.get(addr)
        if known is not None:
            return known
        answer = self._decide(addr)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[addr] = answer
        return answer

    def _decide(self, addr: bytes) -> bool:
        text = addr.decode("latin-1")
        if "%" in text:  # inet_pton takes no IPv6 zone index
            return False
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return False
        if self.networks:
            return any(ip in n for n in self.networks)
        return _legacy_internal(ip)


def classify(head: RequestHead, cfg: HttpConnectionManager, peer_ip: bytes, trust: InternalAddresses) -> bool:
    """Whether the request is internal (ConnectionManagerUtility::mutateRequestHeaders), before the
    connection manager touches x-forwarded-for.  With use_remote_address: no x-forwarded-for and an
    internal peer.  Without: x-forwarded-for (several headers count as one joined with ',') holds one
    address (Utility::getLastAddressFromXFF with no trusted hops), and it is internal."""
    xff = None
    for k, v in head.headers:
        if k == b"x-forwarded-for":
            xff = v if xff is None else xff + b"," + v
    if cfg.use_remote_address:
        return xff is None and trust.internal(peer_ip)
    if xff is None or b"," in xff:
        return False
    addr = xff.strip(_XFF_SPACE)
    return bool(addr) and trust.internal(addr)


def mutate_request_headers_trusting(
    head: RequestHead,
    cfg: HttpConnectionManager,
    peer_ip: bytes,
    trust: InternalAddresses | None,
    internal_only: tuple[bytes, ...] = (),
    conn: object = None,
) -> tuple[bytes, bool]:
    """mutate_request_headers when some requests may be internal (`trust`) or the route configuration
    has internal_only_headers: returns (request id, internal)."""
    internal = trust is not None and classify(head, cfg, peer_ip, trust)
    if not internal:
        external_id = mutate_request_headers(head, cfg, peer_ip, conn)
        if internal_only:
            head.headers = [h for h in head.headers if h[0] not in internal_only]
        return external_id, False
    # Internal: Envoy's control headers stay for the router; x-envoy-internal is (re)set.
    if cfg.normalize_path:
        head.path = normalize_path(head.path)
    if cfg.merge_slashes:
        head.path = merge_slashes(head.path)
    if cfg.via:
        append_via(head.headers, cfg.via.encode())
    forward_client_cert(head, cfg, conn)  # the internal path is not the hot one: no pre-check
    headers = head.headers
    rid: bytes | None = None
    xfp: bytes | None = None
    drop = False
    for k, v in headers:
        if k == b"x-request-id":
            rid = v
        elif k == b"x-forwarded-proto":
            xfp = v
        elif k in ALWAYS_REMOVED:
            drop = True
    if drop:
        headers = head.headers = [h for h in headers if h[0] not in ALWAYS_REMOVED]
    if cfg.use_remote_address:
        if not cfg.skip_xff_append:
            # (no x-forwarded-for arrived: that is what made this request internal)
            headers.append((b"x-forwarded-for", local_address() if _is_loopback(peer_ip) else peer_ip))
        head.set(b"x-forwarded-proto", head.scheme)
        headers = head.headers
    elif xfp is None:
        headers.append((b"x-forwarded-proto", head.scheme))
    headers.append((b"x-envoy-internal", b"true"))
    if not cfg.generate_request_id:
        return rid or b"", True
    if rid is None:
        rid = new_request_id()
        headers.append((b"x-request-id", rid))
    return rid, True


# --- x-forwarded-client-cert ---------------------------------------------------------------------

# Per TLS session object: the facts XFCC reads, gathered at the connection's first request that
# needs them (Envoy caches them on its ConnectionInfo too), and the element last built from them.
_client_certs: weakref.WeakKeyDictionary[Any, tuple[xfcc.ClientCert, ClientCertDetails | None, bytes]] = (
    weakref.WeakKeyDictionary()
)


def connection_client_cert(conn: object) -> xfcc.ClientCert | None:
    """The client certificate facts of a downstream connection, or None when it is not mTLS
    (plaintext, or TLS without a peer certificate: Envoy's peerCertificatePresented)."""
    peer = getattr(conn, "peer_identity", None)
    transport = getattr(conn, "transport", None)
    if peer is None or transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    hit = _client_certs.get(ssl_object)
    if hit is not None:
        return hit[0]
    from sidecar.tls import local_cert
    from sidecar.tls.identity import peer_identity

    der = ssl_object.getpeercert(binary_form=True) or b""
    if not der:
        return None
    local = local_cert.local_certificate(ssl_object)
    local_uris = peer_identity(local).uri_sans if local else ()
    chain = local_cert.peer_chain(ssl_object)
    if chain and chain[0] == der:  # a client-side chain starts with the leaf
        chain = chain[1:]
    sha256 = getattr(peer, "sha256", "")
    if not isinstance(sha256, str) or not sha256:
        import hashlib

        sha256 = hashlib.sha256(der).hexdigest()
    cert = xfcc.ClientCert(
        local_uri_sans=tuple(local_uris),
        sha256=sha256,
        subject=str(getattr(peer, "subject", "")),
        uri_sans=tuple(getattr(peer, "uri_sans", ())),
        dns_sans=tuple(getattr(peer, "dns_sans", ())),
        der=der,
        chain_der=chain,
    )
    _client_certs[ssl_object] = (cert, None, b"")
    return cert


def _element(conn: object, cert: xfcc.ClientCert, details: ClientCertDetails) -> bytes:
    transport = getattr(conn, "transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    hit = _client_certs.get(ssl_object) if ssl_object is not None else None
    if hit is not None and hit[1] == details:
        return hit[2]
    value = xfcc.element(cert, details)
    if ssl_object is not None:
        _client_certs[ssl_object] = (cert, details, value)
    return value


def forward_client_cert(head: RequestHead, cfg: HttpConnectionManager, conn: object) -> None:
    """HCM forward_client_cert_details on one request (mutateXfccRequestHeader)."""
    mode = cfg.forward_client_cert_details
    if mode is ForwardClientCert.ALWAYS_FORWARD_ONLY:
        return
    cert = None if mode is ForwardClientCert.SANITIZE else connection_client_cert(conn)
    action = xfcc.decide(mode, cert is not None)
    value = b""
    if cert is not None and (action is xfcc.XfccAction.APPEND or action is xfcc.XfccAction.SET):
        value = _element(conn, cert, cfg.set_current_client_cert_details)
    head.headers = xfcc.rewrite(head.headers, action, value)
