"""The SecretStore: every secret the TLS contexts use, by name, with its bytes read and versioned.

Three kinds of entries, one shape (`StoredSecret`):
- named secrets from bootstrap static_resources.secrets or SDS (`set_secret`, `remove_secret`);
- inline certificates and validation contexts of a transport socket (`add_inline` / `release`),
  stored under a content-derived name so that equal ones are read and watched once;
- both may point at files (DataSource.filename): `poll()` re-reads every watched file and, when a
  secret's bytes changed, swaps in a new version and calls its subscribers.  The provider of each
  TLS context then builds new SSL contexts, so new handshakes use the new certificate at once while
  open connections keep the context they started with (Envoy's SDS/file rotation behaviour).

File reads and environment lookups go through injectable functions; the timer that calls `poll()`
is the caller's (`start_polling` takes the loop's call_later).  No locks: loop thread only."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    DataSourceKind,
    Secret,
    TlsCertificate,
)

Reader = Callable[[str], bytes]
Subscriber = Callable[["StoredSecret"], None]
INLINE_PREFIX = "inline:"


class SecretError(Exception):
    """A secret's data cannot be read (Envoy rejects the config or the SDS update)."""


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True, slots=True)
class StoredSecret:
    name: str
    version: str
    secret: Secret
    blobs: Mapping[DataSource, bytes] = field(repr=False)
    digest: str = ""

    def data(self, ds: DataSource) -> bytes:
        return ds.inline if ds.kind is DataSourceKind.INLINE else self.blobs.get(ds, b"")

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(ds.name for ds in self.blobs if ds.kind is DataSourceKind.FILE)


def _sources(secret: Secret) -> Iterator[tuple[str, DataSource]]:
    tc, vc = secret.tls_certificate, secret.validation_context
    if tc is not None:
        yield from (
            ("certificate_chain", tc.certificate_chain),
            ("private_key", tc.private_key),
            ("password", tc.password),
            ("pkcs12", tc.pkcs12),
        )
    if vc is not None:
        yield from (("trusted_ca", vc.trusted_ca), ("crl", vc.crl))


def _digest(secret: Secret, blobs: Mapping[DataSource, bytes]) -> str:
    h = hashlib.sha256(repr(secret).encode())
    for ds, data in sorted(blobs.items(), key=lambda kv: (kv[0].kind.value, kv[0].name)):
        h.update(f"{ds.kind.value}:{ds.name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


class SecretStore:
    def __init__(
        self,
        read: Reader = read_file,
        env: Mapping[str, str] | None = None,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self._read = read
        self._env = env if env is not None else os.environ
        self._on_error = on_error
        self._entries: dict[str, StoredSecret] = {}
        self._explicit_version: dict[str, bool] = {}
        self._inline_refs: dict[str, int] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}

    # -- reading ------------------------------------------------------------------------------------
    def _load(self, secret: Secret) -> dict[DataSource, bytes]:
        blobs: dict[DataSource, bytes] = {}
        for field_name, ds in _sources(secret):
            if ds.kind is DataSourceKind.FILE:
                try:
                    blobs[ds] = self._read(ds.name)
                except OSError as exc:
                    raise SecretError(
                        f"{secret.name}.{field_name}: cannot read {ds.name}: {exc.strerror or exc}"
                    ) from None
            elif ds.kind is DataSourceKind.ENV:
                value = self._env.get(ds.name)
                if value is None:
                    raise SecretError(
                        f"{secret.name}.{field_name}: Environment variable doesn't exist: {ds.name}"
                    )
                blobs[ds] = value.encode()
        return blobs

    def _store(self, secret: Secret, blobs: dict[DataSource, bytes], version: str) -> StoredSecret:
        digest = _digest(secret, blobs)
        old = self._entries.get(secret.name)
        if old is not None and old.digest == digest and (not version or version == old.version):
            return old
        entry = StoredSecret(secret.name, version or digest[:16], secret, blobs, digest)
        self._entries[secret.name] = entry
        self._explicit_version[secret.name] = bool(version)
        for fn in list(self._subscribers.get(secret.name, ())):
            fn(entry)
        return entry

    def load(self, secret: Secret) -> dict[DataSource, bytes]:
        """The bytes behind `secret`'s files and variables (SecretError when one cannot be read),
        without storing anything: SDS checks an update with it before accepting it."""
        return self._load(secret)

    # -- named secrets ------------------------------------------------------------------------------------
    def set_secret(self, secret: Secret, version: str = "") -> StoredSecret:
        """Add or replace a named secret (static or from SDS).  Raises SecretError when its files
        or variables cannot be read, leaving the previous version in place."""
        return self._store(secret, self._load(secret), version)

    def remove_secret(self, name: str) -> None:
        """Forget a named secret.  Contexts built from it keep working (Envoy keeps the last one)."""
        self._entries.pop(name, None)
        self._explicit_version.pop(name, None)

    def get(self, name: str) -> StoredSecret | None:
        return self._entries.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    # -- inline secrets ---------------------------------------------------------------------------------------
    def add_inline(self, part: TlsCertificate | CertificateValidationContext) -> str:
        """Store an inline certificate or validation context; returns the name to subscribe to.
        Equal inline secrets share one entry (counted; see `release`)."""
        probe = (
            Secret("", tls_certificate=part)
            if isinstance(part, TlsCertificate)
            else Secret("", validation_context=part)
        )
        name = INLINE_PREFIX + hashlib.sha256(repr(probe).encode()).hexdigest()[:24]
        if name not in self._entries:
            secret = Secret(name, probe.tls_certificate, probe.validation_context)
            self._store(secret, self._load(secret), "")
        self._inline_refs[name] = self._inline_refs.get(name, 0) + 1
        return name

    def release(self, name: str) -> None:
        refs = self._inline_refs.get(name, 0) - 1
        if refs > 0:
            self._inline_refs[name] = refs
            return
        self._inline_refs.pop(name, None)
        if name.startswith(INLINE_PREFIX) and not self._subscribers.get(name):
            self._entries.pop(name, None)

    # -- change notification -------------------------------------------------------------------------------------
    def subscribe(self, name: str, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(new entry)` whenever secret `name` gets new content; returns the unsubscriber."""
        self._subscribers.setdefault(name, []).append(fn)

        def unsubscribe() -> None:
            fns = self._subscribers.get(name, [])
            if fn in fns:
                fns.remove(fn)
            if not fns:
                self._subscribers.pop(name, None)

        return unsubscribe

    def watched_files(self) -> tuple[str, ...]:
        return tuple(sorted({path for e in self._entries.values() for path in e.files}))

    def poll(self) -> list[str]:
        """Re-read the files of every secret that has some; swap in and announce the ones whose bytes
        changed.  A file that cannot be read now keeps the old version (and is reported)."""
        changed = []
        for name, entry in list(self._entries.items()):
            if not entry.files:
                continue
            try:
                blobs = self._load(entry.secret)
            except SecretError as exc:
                if self._on_error is not None:
                    self._on_error(name, str(exc))
                continue
            if _digest(entry.secret, blobs) != entry.digest:
                # A file rotation is a new version even for an SDS secret that named a version.
                self._store(entry.secret, blobs, "")
                changed.append(name)
        return changed


def start_polling(
    store: SecretStore, call_later: Callable[[float, Callable[[], None]], Any], interval: float = 1.0
) -> Callable[[], None]:
    """Poll `store` every `interval` seconds with the event loop's call_later; returns the stopper."""
    state: dict[str, Any] = {"handle": None, "stopped": False}

    def tick() -> None:
        if state["stopped"]:
            return
        store.poll()
        state["handle"] = call_later(interval, tick)

    def stop() -> None:
        state["stopped"] = True
        handle = state["handle"]
        if handle is not None and hasattr(handle, "cancel"):
            handle.cancel()

    state["handle"] = call_later(interval, tick)
    return stop
