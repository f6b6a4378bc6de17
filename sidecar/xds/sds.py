"""SDS for the xDS side: which secrets the listeners and clusters take from a config source, on
which stream they are watched, and the check a delivered secret must pass before it is accepted.

- `listener_refs` / `cluster_refs`: the SdsSecretConfigs with an sds_config (ads or
  api_config_source) of a listener's filter chains (DownstreamTlsContext) or a cluster's
  transport_socket and transport_socket_matches (UpstreamTlsContext).  References without sds_config
  name bootstrap static_resources.secrets and are not watched.
- `interest(refs)`: names by xds.config.ConfigSource, as the driver passes them to XdsClient.watch.
  An SdsSource of kind GRPC becomes an api_config_source stream on its envoy_grpc cluster (Istio:
  the static cluster `sds-grpc`, a Unix socket), one stream per secret as Envoy opens them; kind ADS
  the bootstrap's ADS stream; kind PATH (path_config_source) a watched file (xds/files.py).  Sources that
  differ only by initial_fetch_timeout share a stream, so they are merged (the shortest timeout wins).
- `check_secret`: read its files and build it the way a TLS context would (Envoy's SdsApi validates
  an update by building the new context config; a garbage PEM or a key that does not match its
  certificate is a rejected update, the previous secret keeps serving)."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterable, Iterator

from sidecar.model.cluster import Cluster
from sidecar.model.listener import Listener
from sidecar.model.secret import SdsSecretConfig, SdsSource, SdsSourceKind, Secret
from sidecar.model.tls import TlsContext
from sidecar.tls.contexts import TlsContextError, TlsMaterials, _load_certificate, _load_trust
from sidecar.tls.secrets import SecretError, SecretStore
from sidecar.translate.errors import ConfigError
from sidecar.xds.config import ApiSource, ApiType, ConfigSource, GrpcTarget


def context_refs(ctx: TlsContext | None) -> Iterator[SdsSecretConfig]:
    """The dynamic (sds_config) secret references of one TLS context."""
    if ctx is None:
        return
    common = ctx.common
    for ref in common.tls_certificate_sds:
        if ref.source.kind is not SdsSourceKind.STATIC:
            yield ref
    vc = common.validation_context_sds
    if vc is not None and vc.source.kind is not SdsSourceKind.STATIC:
        yield vc


def listener_refs(lst: Listener) -> tuple[SdsSecretConfig, ...]:
    out: list[SdsSecretConfig] = []
    for chain in (*lst.filter_chains, lst.default_filter_chain):
        if chain is not None:
            out.extend(context_refs(chain.transport_socket))
    return tuple(out)


def cluster_refs(cfg: Cluster) -> tuple[SdsSecretConfig, ...]:
    out = list(context_refs(cfg.transport_socket))
    for m in cfg.transport_socket_matches:
        out.extend(context_refs(m.transport_socket))
    return tuple(out)


def config_source(src: SdsSource) -> ConfigSource:
    """The stream an SdsSource is watched on (initial_fetch_timeout kept)."""
    if src.kind is SdsSourceKind.ADS:
        return ConfigSource(ads=True, initial_fetch_timeout=src.initial_fetch_timeout)
    if src.kind is SdsSourceKind.GRPC:
        api = ApiSource(
            ApiType.DELTA_GRPC if src.delta else ApiType.GRPC,
            grpc=GrpcTarget(cluster_name=src.cluster, authority=src.cluster),
        )
        return ConfigSource(api=api, initial_fetch_timeout=src.initial_fetch_timeout)
    if src.kind is SdsSourceKind.PATH:
        return ConfigSource(path=src.path, initial_fetch_timeout=src.initial_fetch_timeout)
    raise ValueError(f"SDS source {src.kind.value} has no stream")


def interest(refs: Iterable[SdsSecretConfig]) -> dict[ConfigSource, set[str]]:
    """Secret names by the ConfigSource to watch them on (see the module docstring).  As Envoy
    does, every secret from an api_config_source gets a stream of its own (each SdsApi is its own
    subscription); the ones from ADS share the ADS stream."""
    names: dict[ConfigSource, set[str]] = {}
    timeouts: dict[ConfigSource, float] = {}
    for ref in refs:
        src = config_source(ref.source)
        if src.api is not None:
            src = dataclasses.replace(src, api=dataclasses.replace(src.api, stream_key=ref.name))
        key = dataclasses.replace(src, initial_fetch_timeout=0.0)
        names.setdefault(key, set()).add(ref.name)
        t = src.initial_fetch_timeout
        old = timeouts.get(key)
        # 0 disables the timeout (Envoy): any positive timeout is shorter.
        if old is None or (t > 0 and (old == 0 or t < old)):
            timeouts[key] = t
    return {dataclasses.replace(k, initial_fetch_timeout=timeouts[k]): v for k, v in names.items()}


def check_secret(secret: Secret, store: SecretStore) -> None:
    """Raise ConfigError (path relative to the Secret) when `secret` cannot serve: its files cannot
    be read, its certificate or key do not load or do not match, its trusted CA is not PEM."""
    try:
        blobs = store.load(secret)
    except SecretError as exc:
        raise ConfigError("", str(exc)) from None

    def data(ds: object) -> bytes:
        from sidecar.model.secret import DataSource, DataSourceKind

        assert isinstance(ds, DataSource)
        return ds.inline if ds.kind is DataSourceKind.INLINE else blobs.get(ds, b"")

    tc, vc = secret.tls_certificate, secret.validation_context
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        if tc is not None:
            _load_certificate(
                ctx,
                TlsMaterials(
                    cert_chain=data(tc.certificate_chain),
                    private_key=data(tc.private_key),
                    password=data(tc.password),
                    pkcs12=data(tc.pkcs12),
                ),
            )
    except TlsContextError as exc:
        raise ConfigError("tls_certificate", str(exc)) from None
    try:
        if vc is not None and not vc.trusted_ca.empty:
            _load_trust(ctx, TlsMaterials(trusted_ca=data(vc.trusted_ca), crl=data(vc.crl)), vc)
    except TlsContextError as exc:
        raise ConfigError("validation_context", str(exc)) from None
