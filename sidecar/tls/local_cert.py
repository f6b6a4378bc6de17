"""Certificates Python's ssl module does not hand out on a live connection: our own (local)
certificate and the rest of the chain the peer sent.  Envoy reads both from the SSL object
(Ssl::ConnectionInfo uriSanLocalCertificate for XFCC's By, urlEncodedPemEncodedPeerCertificateChain
for its Chain).

Read through ctypes on the libssl that `_ssl` links, with the connection's SSL* found by
sidecar.tls.native (which checks its pointer guesses); everything answers empty when that fails."""

from __future__ import annotations

import ctypes
import ssl

from sidecar.tls import native


def _setup() -> bool:
    lib = native._lib
    if lib is None or not native.AVAILABLE:
        return False
    try:
        lib.SSL_get_certificate.restype = ctypes.c_void_p
        lib.SSL_get_certificate.argtypes = [ctypes.c_void_p]
        lib.SSL_get_peer_cert_chain.restype = ctypes.c_void_p
        lib.SSL_get_peer_cert_chain.argtypes = [ctypes.c_void_p]
        lib.OPENSSL_sk_num.restype = ctypes.c_int
        lib.OPENSSL_sk_num.argtypes = [ctypes.c_void_p]
        lib.OPENSSL_sk_value.restype = ctypes.c_void_p
        lib.OPENSSL_sk_value.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.i2d_X509.restype = ctypes.c_int
        lib.i2d_X509.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    except AttributeError:  # pragma: no cover - another libssl
        return False
    return True


AVAILABLE = _setup()


def _der(x509: int | None) -> bytes:
    lib = native._lib
    if not x509 or lib is None:
        return b""
    size = lib.i2d_X509(x509, None)
    if size <= 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    cursor = ctypes.c_char_p(ctypes.addressof(buf))  # i2d_X509 advances the pointer it is given
    if lib.i2d_X509(x509, ctypes.byref(cursor)) != size:
        return b""
    return buf.raw


def local_certificate(obj: ssl.SSLObject | ssl.SSLSocket) -> bytes:
    """DER of the certificate this side presented (b"" when none or unknown)."""
    if not AVAILABLE or not isinstance(getattr(obj, "context", None), ssl.SSLContext):
        return b""
    ptr = native._ssl_pointer(obj)
    if ptr is None or native._lib is None:
        return b""
    return _der(native._lib.SSL_get_certificate(ptr))


def peer_chain(obj: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """DER of the certificates the peer sent (OpenSSL's SSL_get_peer_cert_chain: on a server the
    leaf is not included, on a client it is first)."""
    if not AVAILABLE or not isinstance(getattr(obj, "context", None), ssl.SSLContext):
        return ()
    ptr = native._ssl_pointer(obj)
    lib = native._lib
    if ptr is None or lib is None:
        return ()
    stack = lib.SSL_get_peer_cert_chain(ptr)
    if not stack:
        return ()
    n = lib.OPENSSL_sk_num(stack)
    return tuple(d for d in (_der(lib.OPENSSL_sk_value(stack, i)) for i in range(max(n, 0))) if d)
