"""The peer identity RBAC's `authenticated` principal reads: URI SANs, DNS SANs and subject of the
downstream peer certificate (Envoy's Ssl::ConnectionInfo uriSanPeerCertificate,
dnsSansPeerCertificate, subjectPeerCertificate).

`transport_identity(transport)` answers for an asyncio transport: None when it is not TLS, the
names of the peer certificate otherwise (all empty when the peer sent none).  The certificate is
parsed once per TLS session object (a weak cache), not per request.

The TLS transport sockets are built separately (sidecar/tls); when a connection carries its own
`peer_identity` (anything with uri_sans, dns_sans and subject: model.rbac.PeerIdentity or
sidecar.tls.identity.PeerIdentity) the filters use that instead.  Difference kept on
purpose: the subject is cryptography's RFC 4514 string; OpenSSL's RFC 2253 printing, which Envoy
uses, spells a few rare attribute types differently (emailAddress)."""

from __future__ import annotations

import weakref
from typing import Any

from cryptography import x509

from sidecar.model.rbac import PeerIdentity, PeerNames

NO_CERTIFICATE = PeerIdentity()

_cache: weakref.WeakKeyDictionary[Any, PeerIdentity] = weakref.WeakKeyDictionary()


def identity_from_der(der: bytes | None) -> PeerIdentity:
    """The names of one DER certificate; NO_CERTIFICATE for none or one that does not parse."""
    if not der:
        return NO_CERTIFICATE
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return NO_CERTIFICATE
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        san = None
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    if san is not None:
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    return PeerIdentity(uri_sans=uris, dns_sans=dns, subject=cert.subject.rfc4514_string())


def ssl_object_identity(ssl_object: Any) -> PeerIdentity:
    """The identity of the peer of an ssl.SSLObject / SSLSocket, parsed once per object."""
    try:
        cached = _cache.get(ssl_object)
    except TypeError:  # not weak-referenceable: parse every time
        cached = None
    if cached is not None:
        return cached
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:  # handshake not done
        der = None
    identity = identity_from_der(der)
    try:
        _cache[ssl_object] = identity
    except TypeError:
        pass
    return identity


def transport_identity(transport: Any) -> PeerNames | None:
    """None for a plaintext transport (or none at all), the peer's names for a TLS one."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object_identity(ssl_object)


def has_names(obj: object) -> bool:
    """Whether `obj` can stand for a PeerNames (duck-typed: the TLS layer has its own class)."""
    return hasattr(obj, "uri_sans") and hasattr(obj, "dns_sans") and hasattr(obj, "subject")


def connection_identity(conn: Any) -> PeerNames | None:
    """A connection's own `peer_identity` when it has one, else its transport's."""
    own = getattr(conn, "peer_identity", None)
    if own is not None and has_names(own):
        result: PeerNames = own
        return result
    return transport_identity(getattr(conn, "transport", None))


def transport_server_name(transport: Any) -> str:
    """The SNI recorded on a TLS transport's SSL object ("" without TLS or SNI)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    name = getattr(ssl_object, "server_hostname", None) if ssl_object is not None else None
    return name if isinstance(name, str) else ""


def connection_server_name(conn: Any) -> str:
    """The SNI a TLS connection asked for ("" without one): the connection's own
    `requested_server_name` when the TLS layer recorded it (a server-side SSL object does not keep
    the client's SNI; the sni_callback sees it), else the SSL object's."""
    own = getattr(conn, "requested_server_name", None)
    if isinstance(own, str):
        return own
    return transport_server_name(getattr(conn, "transport", None))
