"""SecretStore (named, inline, file-backed secrets; polling rotation) and TlsProvider (warming until
SDS secrets arrive, combined validation contexts, swap on rotation, a bad secret keeps the old
contexts), plus the stats object's registration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    DataSourceKind,
    MatchKind,
    SanMatcher,
    SanType,
    SdsSecretConfig,
    Secret,
    StringMatcher,
    TlsCertificate,
)
from sidecar.model.tls import CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext
from sidecar.observe.stats import Stats
from sidecar.tls.contexts import ContextCache
from sidecar.tls.handshake import ServerTls
from sidecar.tls.provider import TlsProvider
from sidecar.tls.secrets import SecretError, SecretStore, start_polling
from sidecar.tls.stats import TlsStats
from tests.support.ca import Issued, TestCA
from tests.unit.tls.memory_tls import handshake


class FakeFiles:
    """An injectable file system for the store: path -> bytes, with failures on demand."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.reads = 0

    def read(self, path: str) -> bytes:
        self.reads += 1
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory")
        return self.files[path]


def file_ds(path: str) -> DataSource:
    return DataSource(DataSourceKind.FILE, name=path)


def cert_secret(name: str, chain: str = "/certs/chain.pem", key: str = "/certs/key.pem") -> Secret:
    return Secret(name, tls_certificate=TlsCertificate(file_ds(chain), file_ds(key)))


def inline_cert(issued: Issued) -> TlsCertificate:
    return TlsCertificate(DataSource(inline=issued.cert_pem), DataSource(inline=issued.key_pem))


def roots(ca: TestCA) -> Secret:
    return Secret(
        "ROOTCA", validation_context=CertificateValidationContext(trusted_ca=DataSource(inline=ca.root_pem))
    )


# --- SecretStore ----------------------------------------------------------------------------------------------


def test_named_secret_from_files_and_rotation_by_poll() -> None:
    fs = FakeFiles()
    fs.files.update({"/certs/chain.pem": b"C1", "/certs/key.pem": b"K1"})
    store = SecretStore(read=fs.read)
    seen: list[str] = []
    store.subscribe("default", lambda e: seen.append(e.version))
    first = store.set_secret(cert_secret("default"))
    assert first.data(first.secret.tls_certificate.certificate_chain) == b"C1"  # type: ignore[union-attr]
    assert store.watched_files() == ("/certs/chain.pem", "/certs/key.pem")
    assert store.poll() == []  # nothing changed
    fs.files["/certs/chain.pem"] = b"C2"
    assert store.poll() == ["default"]
    now = store.get("default")
    assert now is not None and now.version != first.version
    assert now.data(now.secret.tls_certificate.certificate_chain) == b"C2"  # type: ignore[union-attr]
    assert seen == [first.version, now.version]


def test_unreadable_file_keeps_the_old_version() -> None:
    fs = FakeFiles()
    fs.files.update({"/certs/chain.pem": b"C1", "/certs/key.pem": b"K1"})
    errors: list[tuple[str, str]] = []
    store = SecretStore(read=fs.read, on_error=lambda n, e: errors.append((n, e)))
    old = store.set_secret(cert_secret("default"))
    del fs.files["/certs/key.pem"]
    assert store.poll() == []
    assert store.get("default") is old
    assert errors and errors[0][0] == "default" and "cannot read /certs/key.pem" in errors[0][1]
    with pytest.raises(SecretError, match="cannot read"):
        store.set_secret(cert_secret("other"))


def test_sds_versions_and_unchanged_updates() -> None:
    store = SecretStore(read=FakeFiles().read)
    calls: list[str] = []
    store.subscribe("ROOTCA", lambda e: calls.append(e.version))
    s = Secret("ROOTCA", validation_context=CertificateValidationContext(trusted_ca=DataSource(inline=b"R1")))
    store.set_secret(s, version="v1")
    store.set_secret(s, version="v1")  # the same push again: nothing to do
    store.set_secret(s, version="v2")  # same bytes, new version: announced (cheap: the cache hits)
    assert calls == ["v1", "v2"]
    store.remove_secret("ROOTCA")
    assert store.get("ROOTCA") is None


def test_environment_sources() -> None:
    store = SecretStore(read=FakeFiles().read, env={"ROOT_PEM": "R"})
    vc = CertificateValidationContext(trusted_ca=DataSource(DataSourceKind.ENV, name="ROOT_PEM"))
    entry = store.set_secret(Secret("r", validation_context=vc))
    assert entry.data(vc.trusted_ca) == b"R"
    missing = CertificateValidationContext(trusted_ca=DataSource(DataSourceKind.ENV, name="NOPE"))
    with pytest.raises(SecretError, match="Environment variable doesn't exist: NOPE"):
        store.set_secret(Secret("r2", validation_context=missing))


def test_inline_entries_are_shared_and_released() -> None:
    store = SecretStore(read=FakeFiles().read)
    part = TlsCertificate(DataSource(inline=b"c"), DataSource(inline=b"k"))
    a = store.add_inline(part)
    b = store.add_inline(TlsCertificate(DataSource(inline=b"c"), DataSource(inline=b"k")))
    assert a == b and a.startswith("inline:")
    store.release(a)
    assert store.get(a) is not None
    store.release(a)
    assert store.get(a) is None


def test_start_polling_with_an_injected_timer() -> None:
    fs = FakeFiles()
    fs.files.update({"/c": b"1", "/k": b"1"})
    store = SecretStore(read=fs.read)
    store.set_secret(cert_secret("default", "/c", "/k"))
    scheduled: list[tuple[float, Callable[[], None]]] = []

    class Handle:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    handles: list[Handle] = []

    def call_later(delay: float, fn: Callable[[], None]) -> Any:
        scheduled.append((delay, fn))
        handles.append(Handle())
        return handles[-1]

    stop = start_polling(store, call_later, interval=0.5)
    assert [d for d, _ in scheduled] == [0.5]
    reads = fs.reads
    scheduled[-1][1]()  # the timer fires: one poll, and the next tick is armed
    assert fs.reads == reads + 2 and len(scheduled) == 2
    stop()
    assert handles[-1].cancelled
    scheduled[-1][1]()  # a tick that was already due does nothing after stop
    assert len(scheduled) == 2


# --- TlsProvider -------------------------------------------------------------------------------------------------


def sds_server(sans: tuple[str, ...] = ()) -> DownstreamTlsContext:
    default_vc = CertificateValidationContext(
        san_matchers=tuple(SanMatcher(SanType.URI, StringMatcher(MatchKind.EXACT, s)) for s in sans)
    )
    return DownstreamTlsContext(
        common=CommonTlsContext(
            tls_certificate_sds=(SdsSecretConfig("default"),),
            validation_context=default_vc,
            validation_context_sds=SdsSecretConfig("ROOTCA"),
        ),
        require_client_certificate=True,
    )


def workload_secret(issued: Issued) -> Secret:
    return Secret("default", tls_certificate=inline_cert(issued))


def test_provider_warms_until_both_secrets_arrive(ca: TestCA) -> None:
    store = SecretStore(read=FakeFiles().read)
    updates: list[TlsProvider] = []
    p = TlsProvider(sds_server(), store, TlsStats(), cache=ContextCache(), on_update=updates.append)
    assert not p.ready and p.missing == ("default", "ROOTCA")
    store.set_secret(workload_secret(ca.workload("a", "server")), "1")
    assert not p.ready and p.missing == ("ROOTCA",)
    store.set_secret(roots(ca), "1")
    assert p.ready and p.missing == () and len(updates) == 1
    assert isinstance(p.current, ServerTls)
    assert p.current.version == "default@1,ROOTCA@1"


def test_combined_validation_context_merges(ca: TestCA) -> None:
    store = SecretStore(read=FakeFiles().read)
    client_cert = ca.workload("b", "client")
    store.set_secret(workload_secret(ca.workload("a", "server")), "1")
    store.set_secret(roots(ca), "1")
    p = TlsProvider(sds_server(sans=(client_cert.uri,)), store, TlsStats(), cache=ContextCache())
    assert p.current is not None and p.current.validation is not None
    merged = p.current.validation
    assert merged.trusted_ca == DataSource(inline=ca.root_pem)  # from ROOTCA
    assert len(merged.san_matchers) == 1  # from the default context
    cli_cfg = UpstreamTlsContext(common=CommonTlsContext(tls_certificates=(inline_cert(client_cert),)))
    cli = TlsProvider(cli_cfg, store, TlsStats(), cache=ContextCache())
    assert cli.current is not None
    pair = handshake(p.current.ssl_context, cli.current.ssl_context)
    assert pair.ok and p.current.on_handshake(pair.server).ok
    wrong = ca.workload("b", "intruder")
    cli2 = TlsProvider(
        UpstreamTlsContext(common=CommonTlsContext(tls_certificates=(inline_cert(wrong),))), store, TlsStats()
    )
    assert cli2.current is not None
    pair = handshake(p.current.ssl_context, cli2.current.ssl_context)
    assert pair.ok and not p.current.on_handshake(pair.server).ok


def test_rotation_swaps_contexts_and_keeps_the_old_ones_usable(ca: TestCA) -> None:
    store = SecretStore(read=FakeFiles().read)
    cache = ContextCache()
    store.set_secret(workload_secret(ca.workload("a", "server")), "1")
    store.set_secret(roots(ca), "1")
    p = TlsProvider(sds_server(), store, TlsStats(), cache=cache)
    before = p.current
    assert before is not None
    new_cert = ca.workload("a", "server", name="a-server-rotated")
    store.set_secret(workload_secret(new_cert), "2")
    after = p.current
    assert after is not None and after is not before and after.ssl_context is not before.ssl_context
    assert after.version == "default@2,ROOTCA@1" and cache.builds == 2
    # A new handshake sees the new certificate; the old context still works for old connections.
    client_cfg = UpstreamTlsContext(
        common=CommonTlsContext(tls_certificates=(inline_cert(ca.workload("b", "c")),))
    )
    cli = TlsProvider(client_cfg, store, TlsStats(), cache=cache)
    assert cli.current is not None
    for tls, serial in ((after, new_cert.serial), (before, None)):
        pair = handshake(tls.ssl_context, cli.current.ssl_context)
        assert pair.ok
        seen = cli.current.on_handshake(pair.client).peer
        assert seen is not None
        if serial is not None:
            assert int(seen.serial, 16) == serial
        else:
            assert int(seen.serial, 16) != new_cert.serial


def test_bad_rotation_keeps_the_old_contexts(ca: TestCA) -> None:
    store = SecretStore(read=FakeFiles().read)
    good = ca.workload("a", "server")
    store.set_secret(workload_secret(good), "1")
    store.set_secret(roots(ca), "1")
    errors: list[str] = []
    p = TlsProvider(sds_server(), store, TlsStats(), cache=ContextCache(), on_error=errors.append)
    before = p.current
    other = ca.workload("a", "other")
    mismatched = Secret(
        "default", TlsCertificate(DataSource(inline=good.cert_pem), DataSource(inline=other.key_pem))
    )
    store.set_secret(mismatched, "2")
    assert p.current is before
    assert errors and "private key" in errors[0] and p.error == errors[0]
    store.set_secret(workload_secret(other), "3")  # a good one after a bad one
    assert p.current is not before and p.error == ""


def test_secret_of_the_wrong_kind_is_an_error(ca: TestCA) -> None:
    store = SecretStore(read=FakeFiles().read)
    store.set_secret(Secret("default", validation_context=CertificateValidationContext()), "1")
    store.set_secret(roots(ca), "1")
    p = TlsProvider(sds_server(), store, TlsStats(), cache=ContextCache())
    assert not p.ready and "is not a tls_certificate" in p.error


def test_inline_file_certificates_rotate_through_poll(ca: TestCA) -> None:
    fs = FakeFiles()
    first, second = ca.workload("a", "s1"), ca.workload("a", "s2")
    fs.files.update({"/c": first.cert_pem, "/k": first.key_pem})
    store = SecretStore(read=fs.read)
    cfg = DownstreamTlsContext(
        common=CommonTlsContext(tls_certificates=(TlsCertificate(file_ds("/c"), file_ds("/k")),))
    )
    p = TlsProvider(cfg, store, TlsStats(), cache=ContextCache())
    before = p.current
    assert before is not None
    # Half a rotation (new chain, old key) fails to build and keeps the old contexts ...
    fs.files["/c"] = second.cert_pem
    store.poll()
    assert p.current is before and p.error
    # ... and the other half completes it.
    fs.files["/k"] = second.key_pem
    store.poll()
    assert p.current is not before and p.error == ""
    p.close()
    assert store.names() == ()  # the inline entry went away with its last user


def test_providers_share_ssl_contexts(ca: TestCA) -> None:
    store = SecretStore(read=FakeFiles().read)
    store.set_secret(workload_secret(ca.workload("a", "server")), "1")
    store.set_secret(roots(ca), "1")
    cache = ContextCache()
    a = TlsProvider(sds_server(sans=("spiffe://x",)), store, TlsStats(), cache=cache)
    b = TlsProvider(sds_server(sans=("spiffe://y",)), store, TlsStats(), cache=cache)
    assert a.current is not None and b.current is not None
    assert a.current.ssl_context is b.current.ssl_context and cache.builds == 1


# --- stats ----------------------------------------------------------------------------------------------------------


def test_tls_stats_publish_envoy_names() -> None:
    stats = Stats(workers=1, max_slots=256)
    st = TlsStats("listener.0.0.0.0_15006.")
    st.register(stats)
    st.handshake += 2
    st.bump("fail_verify_san")
    st.family("versions", "TLSv1.3")
    st.family("ciphers", "TLS_AES_128_GCM_SHA256")
    st.family("versions", "TLSv1.3")
    assert stats.value("listener.0.0.0.0_15006.ssl.handshake") == 2
    assert stats.value("listener.0.0.0.0_15006.ssl.fail_verify_san") == 1
    assert stats.value("listener.0.0.0.0_15006.ssl.versions.TLSv1.3") == 2
    assert stats.value("listener.0.0.0.0_15006.ssl.ciphers.TLS_AES_128_GCM_SHA256") == 1
    names = dict(st.items())
    assert names["listener.0.0.0.0_15006.ssl.connection_error"] == 0
    assert names["listener.0.0.0.0_15006.ssl.versions.TLSv1.3"] == 2
