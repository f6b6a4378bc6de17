"""TlsProvider: the live TLS of one transport socket (a filter chain's DownstreamTlsContext or a
cluster's UpstreamTlsContext), following its secrets as they arrive and rotate.

`provider.current` is the ServerTls/ClientTls new connections use; it is None until every secret is
there (the listener or cluster is warming, as Envoy waits on its SDS init targets).  When a secret
changes, the provider builds the new contexts on the side and swaps `current` by reference; a
connection keeps the object it read at accept/connect time, so rotation never cuts one.  A secret
that fails to build (key not matching the certificate, garbage PEM) leaves the previous contexts in
place and is reported through `on_error`, as Envoy rejects a bad SDS update."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.model.secret import CertificateValidationContext, DataSource
from sidecar.model.tls import DownstreamTlsContext, TlsContext
from sidecar.tls.contexts import DEFAULT_CACHE, ContextCache, TlsContextError, TlsMaterials
from sidecar.tls.handshake import ClientTls, ServerTls, tls_for
from sidecar.tls.secrets import SecretStore, StoredSecret
from sidecar.tls.stats import TlsStats


class TlsProvider:
    def __init__(
        self,
        cfg: TlsContext,
        store: SecretStore,
        stats: TlsStats,
        *,
        cache: ContextCache | None = None,
        on_update: Callable[[TlsProvider], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """Raises SecretError when an inline secret's file or variable cannot be read."""
        self.config = cfg
        self.stats = stats
        self.current: ServerTls | ClientTls | None = None
        self.error = ""  # the last build failure ("" after a success)
        self._store = store
        self._cache = cache if cache is not None else DEFAULT_CACHE
        self._on_update = on_update
        self._on_error = on_error
        common = cfg.common
        self._inline: list[str] = []
        self._cert_name = ""
        if common.tls_certificates:
            self._cert_name = self._add_inline(common.tls_certificates[0])
        elif common.tls_certificate_sds:
            self._cert_name = common.tls_certificate_sds[0].name
        self._default_vc = common.validation_context
        self._default_vc_name = self._add_inline(self._default_vc) if self._default_vc is not None else ""
        self._vc_name = (
            common.validation_context_sds.name if common.validation_context_sds is not None else ""
        )
        self._unsubscribe = [store.subscribe(name, self._changed) for name in self._names() if name]
        self._rebuild()

    def _add_inline(self, part: object) -> str:
        name = self._store.add_inline(part)  # type: ignore[arg-type]
        self._inline.append(name)
        return name

    def _names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (self._cert_name, self._default_vc_name, self._vc_name) if n))

    @property
    def missing(self) -> tuple[str, ...]:
        """Secret names not yet in the store."""
        return tuple(n for n in self._names() if self._store.get(n) is None)

    @property
    def ready(self) -> bool:
        return self.current is not None

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for name in self._inline:
            self._store.release(name)
        self._inline = []

    # -- building -------------------------------------------------------------------------------------
    def _changed(self, _entry: StoredSecret) -> None:
        self._rebuild()

    def _materials(self) -> tuple[TlsMaterials, str] | None:
        store = self._store
        entries: list[StoredSecret] = []
        cert = store.get(self._cert_name) if self._cert_name else None
        if self._cert_name and cert is None:
            return None
        kw: dict[str, object] = {}
        if cert is not None:
            entries.append(cert)
            tc = cert.secret.tls_certificate
            if tc is None:
                raise TlsContextError(f"secret '{self._cert_name}' is not a tls_certificate")
            kw.update(
                cert_chain=cert.data(tc.certificate_chain),
                private_key=cert.data(tc.private_key),
                password=cert.data(tc.password),
                pkcs12=cert.data(tc.pkcs12),
            )
        vc: CertificateValidationContext | None = None
        sources: list[StoredSecret] = []
        if self._default_vc_name:
            default = store.get(self._default_vc_name)
            if default is None:
                return None
            sources.append(default)
            vc = self._default_vc
        if self._vc_name:
            dynamic = store.get(self._vc_name)
            if dynamic is None:
                return None
            if dynamic.secret.validation_context is None:
                raise TlsContextError(f"secret '{self._vc_name}' is not a validation_context")
            sources.append(dynamic)
            vc = (
                dynamic.secret.validation_context
                if vc is None
                else vc.merged(dynamic.secret.validation_context)
            )
        entries.extend(sources)
        if vc is not None:
            kw.update(trusted_ca=_lookup(sources, vc.trusted_ca), crl=_lookup(sources, vc.crl), validation=vc)
        version = ",".join(f"{e.name}@{e.version}" for e in entries if not e.name.startswith("inline:"))
        return TlsMaterials(**kw), version  # type: ignore[arg-type]

    def _rebuild(self) -> None:
        try:
            found = self._materials()
            if found is None:
                return  # still warming: a secret has not arrived
            materials, version = found
            ctx = self._cache.get(self.config, materials, self.stats)
            built = tls_for(self.config, ctx, materials, self.stats, version)
        except TlsContextError as exc:
            self.error = str(exc)
            if self._on_error is not None:
                self._on_error(self.error)
            return
        self.error = ""
        self.current = built
        if self._on_update is not None:
            self._on_update(self)

    @property
    def server_side(self) -> bool:
        return isinstance(self.config, DownstreamTlsContext)

    @property
    def server(self) -> ServerTls | None:
        """`current` for a DownstreamTlsContext (None while warming or for a client provider)."""
        cur = self.current
        return cur if isinstance(cur, ServerTls) else None

    @property
    def client(self) -> ClientTls | None:
        """`current` for an UpstreamTlsContext (None while warming or for a server provider)."""
        cur = self.current
        return cur if isinstance(cur, ClientTls) else None


def _lookup(entries: list[StoredSecret], ds: DataSource) -> bytes:
    """The bytes of `ds` from whichever entry read it (the merged context mixes two secrets)."""
    if ds.empty:
        return b""
    for entry in entries:
        data = entry.data(ds)
        if data:
            return data
    return b""
