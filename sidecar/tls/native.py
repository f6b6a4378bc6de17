"""The few OpenSSL settings Envoy makes that Python's ssl module cannot: key-exchange group lists,
signature algorithm lists, verify depth, session cache mode and timeout, and a certificate verify
callback (for trust_chain_verification ACCEPT_UNTRUSTED, and for a server that must request client
certificates it has no CA for).

They are called through ctypes on the very libssl that `_ssl` links (symbols are looked up through
the `_ssl` extension's own handle) with the SSL_CTX pointer of an ssl.SSLContext.  CPython keeps
that pointer right after the object header (`PySSLContext.ctx`, Modules/_ssl.c); `_pointer` checks
the guess against SSL_CTX_get_options before any use, and everything here reports False when the
check fails or a symbol is missing, so callers refuse the setting instead of guessing."""

from __future__ import annotations

import ctypes
import ssl
from collections.abc import Callable

try:
    import _ssl

    _lib: ctypes.CDLL | None = ctypes.CDLL(_ssl.__file__)
except (ImportError, OSError, AttributeError):  # pragma: no cover - no _ssl extension file
    _lib = None

# include/openssl/ssl.h (OpenSSL 3.0)
_CTRL_SET_SESS_CACHE_MODE = 44
_CTRL_SET_GROUPS_LIST = 92
_CTRL_SET_SIGALGS_LIST = 98
_SESS_CACHE_OFF = 0

_CTRL_GET_PEER_SIGNATURE_NID = 108
_CTRL_GET_NEGOTIATED_GROUP = 134
# obj_mac.h NIDs -> Envoy's (BoringSSL's) names for the ssl.curves.* and ssl.sigalgs.* stats.
_GROUPS = {1034: "X25519", 415: "P-256", 715: "P-384", 716: "P-521"}
_EC, _RSA, _RSA_PSS, _ED25519 = 408, 6, 912, 1087
_SIGALGS = {
    (_EC, 672): "ecdsa_secp256r1_sha256",
    (_EC, 673): "ecdsa_secp384r1_sha384",
    (_EC, 674): "ecdsa_secp521r1_sha512",
    (_EC, 64): "ecdsa_sha1",
    (_RSA_PSS, 672): "rsa_pss_rsae_sha256",
    (_RSA_PSS, 673): "rsa_pss_rsae_sha384",
    (_RSA_PSS, 674): "rsa_pss_rsae_sha512",
    (_RSA, 672): "rsa_pkcs1_sha256",
    (_RSA, 673): "rsa_pkcs1_sha384",
    (_RSA, 674): "rsa_pkcs1_sha512",
    (_RSA, 64): "rsa_pkcs1_sha1",
}

_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _setup() -> bool:
    if _lib is None:
        return False
    try:
        _lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        _lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        _lib.SSL_CTX_ctrl.restype = ctypes.c_long
        _lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        _lib.SSL_CTX_set_verify_depth.restype = None
        _lib.SSL_CTX_set_verify_depth.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib.SSL_CTX_set_timeout.restype = ctypes.c_long
        _lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
        _lib.SSL_CTX_set_cert_verify_callback.restype = None
        _lib.SSL_CTX_set_cert_verify_callback.argtypes = [ctypes.c_void_p, _VERIFY_CB, ctypes.c_void_p]
        _lib.X509_verify_cert.restype = ctypes.c_int
        _lib.X509_verify_cert.argtypes = [ctypes.c_void_p]
        _lib.X509_STORE_CTX_get_error.restype = ctypes.c_int
        _lib.X509_STORE_CTX_get_error.argtypes = [ctypes.c_void_p]
        _lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
        _lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
        _lib.SSL_ctrl.restype = ctypes.c_long
        _lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        _lib.SSL_get_peer_signature_type_nid.restype = ctypes.c_int
        _lib.SSL_get_peer_signature_type_nid.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    except AttributeError:  # pragma: no cover - another libssl
        return False
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return _pointer(probe, checked=False) is not None


def _pointer(ctx: ssl.SSLContext, checked: bool = True) -> int | None:
    """The SSL_CTX* inside `ctx`, verified by flipping an option bit and reading it back."""
    if _lib is None or (checked and not AVAILABLE):
        return None
    head = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type
    ptr = ctypes.c_void_p.from_address(id(ctx) + head).value
    if not ptr:
        return None
    before = int(ctx.options)
    if _lib.SSL_CTX_get_options(ptr) != before:
        return None
    ctx.options ^= ssl.OP_NO_TICKET
    moved = _lib.SSL_CTX_get_options(ptr) == int(ctx.options)
    ctx.options ^= ssl.OP_NO_TICKET
    return int(ptr) if moved else None


AVAILABLE = _setup()


def set_groups(ctx: ssl.SSLContext, names: tuple[str, ...]) -> bool:
    """SSL_CTX_set1_groups_list: the key-exchange groups (TlsParameters.ecdh_curves)."""
    ptr = _pointer(ctx)
    if ptr is None or _lib is None:
        return False
    return bool(
        _lib.SSL_CTX_ctrl(ptr, _CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(":".join(names).encode())) == 1
    )


def set_sigalgs(ctx: ssl.SSLContext, names: tuple[str, ...]) -> bool:
    """SSL_CTX_set1_sigalgs_list (TlsParameters.signature_algorithms)."""
    ptr = _pointer(ctx)
    if ptr is None or _lib is None:
        return False
    return bool(
        _lib.SSL_CTX_ctrl(ptr, _CTRL_SET_SIGALGS_LIST, 0, ctypes.c_char_p(":".join(names).encode())) == 1
    )


def set_verify_depth(ctx: ssl.SSLContext, depth: int) -> bool:
    ptr = _pointer(ctx)
    if ptr is None or _lib is None:
        return False
    _lib.SSL_CTX_set_verify_depth(ptr, depth)
    return True


def set_session_timeout(ctx: ssl.SSLContext, seconds: int) -> bool:
    ptr = _pointer(ctx)
    if ptr is None or _lib is None:
        return False
    _lib.SSL_CTX_set_timeout(ptr, seconds)
    return True


def disable_session_cache(ctx: ssl.SSLContext) -> bool:
    """SSL_CTX_set_session_cache_mode(SSL_SESS_CACHE_OFF) (disable_stateful_session_resumption)."""
    ptr = _pointer(ctx)
    if ptr is None or _lib is None:
        return False
    _lib.SSL_CTX_ctrl(ptr, _CTRL_SET_SESS_CACHE_MODE, _SESS_CACHE_OFF, None)
    return True


def accept_untrusted(ctx: ssl.SSLContext, on_chain_error: Callable[[int], None]) -> bool:
    """Replace OpenSSL's chain check with one that still runs it (X509_verify_cert, with the
    context's store, flags and CRLs) but always accepts, calling `on_chain_error(code)` when the chain
    did not verify: Envoy's ACCEPT_UNTRUSTED (DefaultCertValidator::doVerifyCertChain).  The verify
    mode still decides whether a peer certificate is requested or required."""
    ptr = _pointer(ctx)
    if ptr is None or _lib is None:
        return False
    lib = _lib

    def verify(store_ctx: int | None, _arg: int | None) -> int:
        if lib.X509_verify_cert(store_ctx) != 1:
            try:
                on_chain_error(lib.X509_STORE_CTX_get_error(store_ctx))
            except Exception:  # never let Python errors escape into OpenSSL
                pass
        return 1

    cb = _VERIFY_CB(verify)
    _lib.SSL_CTX_set_cert_verify_callback(ptr, cb, None)
    # The callback must live as long as the context (ctypes frees it with its last reference).
    ctx._sidecar_verify_cb = cb  # type: ignore[attr-defined]
    return True


def _ssl_pointer(obj: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    """The SSL* of a connection (`PySSLSocket.ssl`, after the header and the socket weakref),
    checked against its context's SSL_CTX*."""
    inner = getattr(obj, "_sslobj", None)
    ctx_ptr = _pointer(obj.context)
    if inner is None or ctx_ptr is None or _lib is None:
        return None
    head = ctypes.sizeof(ctypes.c_ssize_t) + 2 * ctypes.sizeof(ctypes.c_void_p)
    ptr = ctypes.c_void_p.from_address(id(inner) + head).value
    if not ptr or _lib.SSL_get_SSL_CTX(ptr) != ctx_ptr:
        return None
    return int(ptr)


def handshake_details(obj: ssl.SSLObject | ssl.SSLSocket) -> tuple[str | None, str | None]:
    """(key exchange group, peer signature algorithm) in Envoy's names, for ContextImpl::logHandshake's
    ssl.curves.* and ssl.sigalgs.* counters; None where unknown or not available."""
    ptr = _ssl_pointer(obj)
    if ptr is None or _lib is None:
        return None, None
    group = _GROUPS.get(int(_lib.SSL_ctrl(ptr, _CTRL_GET_NEGOTIATED_GROUP, 0, None)))
    kind, digest = ctypes.c_int(0), ctypes.c_int(0)
    sigalg = None
    if _lib.SSL_get_peer_signature_type_nid(ptr, ctypes.byref(kind)) == 1:
        if kind.value == _ED25519:
            sigalg = "ed25519"
        elif _lib.SSL_ctrl(ptr, _CTRL_GET_PEER_SIGNATURE_NID, 0, ctypes.addressof(digest)) == 1:
            sigalg = _SIGALGS.get((kind.value, digest.value))
    return group, sigalg
