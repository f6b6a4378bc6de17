"""x-forwarded-client-cert (XFCC), as Envoy's connection manager writes it
(ConnectionManagerUtility::mutateXfccRequestHeader; HttpConnectionManager.forward_client_cert_details
and set_current_client_cert_details; the header's format is in Envoy's "HTTP header manipulation"
docs, x-forwarded-client-cert).

Pure: it decides what becomes of the header (`decide`), builds this hop's element from facts about
the TLS connection (`element`, from a `ClientCert` the adapter in http/edge.py fills) and rewrites a
header list (`rewrite`).  It knows nothing of sockets or ssl objects.

Modes (a connection is "mTLS" when it is TLS and the peer presented a certificate):
- ALWAYS_FORWARD_ONLY: the header is left as it came, whatever the connection;
- SANITIZE (Envoy's default), or any mode but ALWAYS_FORWARD_ONLY on a connection that is not
  mTLS: the header is removed;
- FORWARD_ONLY (mTLS): left as it came;
- APPEND_FORWARD (mTLS): this hop's element is appended to the header, after a ',';
- SANITIZE_SET (mTLS): the header is replaced by this hop's element.

An element is `key=value` pairs joined by ';': `By=<local URI SAN>` (one per URI SAN of our own
certificate), `Hash=<hex SHA-256 of the peer certificate's DER>`, then as configured
`Cert="<url-encoded PEM>"`, `Chain="<url-encoded PEMs>"`, `Subject="<RFC 2253 subject>"` (present
even when empty), `URI=<peer URI SAN>` (one per SAN; `URI=` when there is none) and `DNS=<peer DNS
SAN>` (one per SAN).  Like Envoy, values are not escaped: the docs' rule (values holding ',', ';'
or '=' are double-quoted, '"' escaped) is kept by quoting Subject, Cert and Chain, which are the
only values that can hold those characters in practice; `split_elements`/`parse_element` read the
header with that grammar."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from sidecar.http.events import Headers
from sidecar.model.listener import ClientCertDetails, ForwardClientCert

HEADER = b"x-forwarded-client-cert"


class XfccAction(Enum):
    KEEP = "KEEP"
    REMOVE = "REMOVE"
    APPEND = "APPEND"
    SET = "SET"


# The modes that add this hop's element on an mTLS connection.
ADDING = frozenset({ForwardClientCert.APPEND_FORWARD, ForwardClientCert.SANITIZE_SET})


def decide(mode: ForwardClientCert, mtls: bool) -> XfccAction:
    """What becomes of the request's XFCC header (mutateXfccRequestHeader's order of tests)."""
    if mode is ForwardClientCert.ALWAYS_FORWARD_ONLY:
        return XfccAction.KEEP
    if mode is ForwardClientCert.SANITIZE or not mtls:
        return XfccAction.REMOVE
    if mode is ForwardClientCert.FORWARD_ONLY:
        return XfccAction.KEEP
    if mode is ForwardClientCert.APPEND_FORWARD:
        return XfccAction.APPEND
    return XfccAction.SET


@dataclass(frozen=True, slots=True)
class ClientCert:
    """What an mTLS connection knows: our own certificate's URI SANs, and the peer's certificate
    (DER of the leaf, then the rest of the chain it sent) and names."""

    local_uri_sans: tuple[str, ...]
    sha256: str  # lowercase hex of the peer leaf's DER
    subject: str  # RFC 2253, "" for Istio certificates
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    der: bytes = b""
    chain_der: tuple[bytes, ...] = ()


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def url_encode(data: bytes) -> bytes:
    """Percent-encode everything but RFC 3986 section 2.3's unreserved characters (upper-case hex);
    on a PEM this turns ' ', '\\n', '+', '/' and '=' into %20 %0A %2B %2F %3D, as Envoy does."""
    out = bytearray()
    for c in data:
        if c in _UNRESERVED:
            out.append(c)
        else:
            out += b"%%%02X" % c
    return bytes(out)


def pem(der: bytes) -> bytes:
    """One certificate as PEM (RFC 7468: 64-column base64 between the labels, final newline)."""
    b64 = base64.b64encode(der)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def element(cert: ClientCert, details: ClientCertDetails) -> bytes:
    """This hop's XFCC element, in Envoy's order: By..., Hash, Cert, Chain, Subject, URI..., DNS...
    (Envoy's config builds the detail list cert, chain, subject, uri, dns)."""
    parts: list[bytes] = [b"By=" + uri.encode() for uri in cert.local_uri_sans]
    if cert.sha256:
        parts.append(b"Hash=" + cert.sha256.encode())
    if details.cert and cert.der:
        parts.append(b'Cert="' + url_encode(pem(cert.der)) + b'"')
    if details.chain and cert.der:
        chain = b"".join(pem(d) for d in (cert.der, *cert.chain_der))
        parts.append(b'Chain="' + url_encode(chain) + b'"')
    if details.subject:
        parts.append(b'Subject="' + cert.subject.encode() + b'"')  # present even when empty
    if details.uri:
        if cert.uri_sans:
            parts.extend(b"URI=" + uri.encode() for uri in cert.uri_sans)
        else:
            parts.append(b"URI=")
    if details.dns:
        parts.extend(b"DNS=" + name.encode() for name in cert.dns_sans)
    return b";".join(parts)


def rewrite(headers: Headers, action: XfccAction, value: bytes = b"") -> Headers:
    """`headers` with the XFCC header treated per `action`: a new list when something is removed,
    else `headers` itself, changed in place.  Several XFCC headers count as one joined by ',' (what
    Envoy's header map makes of a repeated inline header)."""
    if action is XfccAction.KEEP:
        return headers
    if action is XfccAction.REMOVE:
        for k, _ in headers:
            if k == HEADER:
                return [h for h in headers if h[0] != HEADER]
        return headers
    found: list[bytes] = []
    at = -1
    for i, (k, v) in enumerate(headers):
        if k == HEADER:
            if at < 0:
                at = i
            found.append(v)
    if action is XfccAction.APPEND and found:
        value = b",".join(found) + b"," + value
    if at < 0:
        headers.append((HEADER, value))
        return headers
    if len(found) == 1:
        headers[at] = (HEADER, value)
        return headers
    out = [h for h in headers if h[0] != HEADER]
    out.insert(at, (HEADER, value))
    return out


# -- reading the header (for tests and filters that consume it) --------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes ('\\' escapes the next character inside them)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def split_elements(value: str) -> list[str]:
    """The elements of an XFCC header value (one per hop), split on ',' outside quotes."""
    return _split(value, ",")


def parse_element(text: str) -> list[tuple[str, str]]:
    """The (key, value) pairs of one element, in order; quoted values lose their quotes."""
    pairs: list[tuple[str, str]] = []
    for part in _split(text, ";"):
        key, _, val = part.partition("=")
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1]
        pairs.append((key, val))
    return pairs


def values(pairs: Iterable[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in pairs if k == key]
