"""The dev ADS server's state, without I/O: what each type's version is, and what to send to which
stream for a given request or file change (SotW, Delta, REST-JSON).

`Store` holds the resources per type URL, each packed once with a content version (a hash of its
deterministic serialization), and a per-type version counter bumped only when that type's set
really changed.  A session is one client stream:

- `SotwSession` (StreamAggregatedResources and Stream<Type>s): a request whose `response_nonce` is
  not the latest nonce sent for its type is stale and ignored (xDS protocol, "ACK/NACK and resource
  type instance version"); a matching one is an ACK, or a NACK when `error_detail` is set.  LDS and
  CDS are wildcard (all resources) when `resource_names` is empty or holds "*"; other types get only
  the names asked for.  A response goes out when what the stream should have differs from what it
  was last sent, so an ACK or a NACK of the current content sends nothing.
- `DeltaSession` (DeltaAggregatedResources and Delta<Type>s): subscriptions change with every
  request (`resource_names_subscribe`/`_unsubscribe`, "*" for wildcard, or legacy wildcard: a first
  request that subscribes to nothing); the server tracks the version the client has of each name
  (`initial_resource_versions`, then what it sent) and sends only changed resources and removals.
- `rest_response`: one REST-JSON poll; None means 304 Not Modified.

Nonces come from a callable the caller passes, so the core needs no clock or randomness."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import any_pb2
from google.protobuf.message import Message

from sidecar.devtools.xds_files import CLUSTER, LISTENER, TYPE_URLS

WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})  # "full sets": SotW LDS/CDS always send everything
Packed = tuple[str, any_pb2.Any]  # (resource version, packed resource)
NonceFn = Callable[[], str]


def content_version(msg: Message) -> str:
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()[:12]


class Store:
    """Every resource, per type URL, with versions.  `replace` returns the types that changed."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Packed]] = {t: {} for t in TYPE_URLS}
        self.counters: dict[str, int] = dict.fromkeys(TYPE_URLS, 0)

    def version(self, type_url: str) -> str:
        return str(self.counters.get(type_url, 0))

    def replace(self, resources: Mapping[str, Mapping[str, Message]]) -> list[str]:
        changed = []
        for type_url in TYPE_URLS:
            new: dict[str, Packed] = {}
            for name, msg in resources.get(type_url, {}).items():
                packed = any_pb2.Any()
                packed.Pack(msg)
                new[name] = (content_version(msg), packed)
            old = self.resources[type_url]
            if self.counters[type_url] == 0 or _versions(new) != _versions(old):
                self.resources[type_url] = new
                self.counters[type_url] += 1
                changed.append(type_url)
        return changed

    def select(self, type_url: str, names: frozenset[str] | None) -> dict[str, Packed]:
        """The resources of a type a client asked for (None: all of them); unknown names are left out."""
        have = self.resources.get(type_url, {})
        if names is None:
            return dict(have)
        return {n: have[n] for n in sorted(names) if n in have}


def _versions(res: Mapping[str, Packed]) -> dict[str, str]:
    return {n: v for n, (v, _) in res.items()}


def _digest(res: Mapping[str, Packed]) -> str:
    text = "\n".join(f"{n}={v}" for n, (v, _) in sorted(res.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Outcome:
    """What a request led to: responses to send, and whether it was an ACK, a NACK or stale."""

    responses: list[Any] = field(default_factory=list)  # DiscoveryResponse or DeltaDiscoveryResponse
    ack: bool = False
    nack: str | None = None  # error_detail.message of a NACK
    stale: bool = False  # an old nonce: ignored
    unknown_type: bool = False


@dataclass
class _SotwType:
    names: frozenset[str] | None = None  # None: wildcard
    nonce: str = ""
    sent: str | None = None  # digest of the last response's content; None: nothing sent yet


class SotwSession:
    """One State-of-the-World stream.  `only_type` is the type of a per-type stream (its requests
    may leave type_url empty); None for ADS."""

    def __init__(self, store: Store, nonce: NonceFn, only_type: str | None = None) -> None:
        self.store = store
        self.nonce = nonce
        self.only_type = only_type
        self.types: dict[str, _SotwType] = {}

    def on_request(self, req: d.DiscoveryRequest) -> Outcome:
        type_url = req.type_url or self.only_type or ""
        if type_url not in TYPE_URLS or (self.only_type and type_url != self.only_type):
            return Outcome(unknown_type=True)
        st = self.types.get(type_url)
        out = Outcome()
        if req.response_nonce:
            if st is None or req.response_nonce != st.nonce:
                return Outcome(stale=True)
            if req.HasField("error_detail"):
                out.nack = req.error_detail.message or "(no message)"
            else:
                out.ack = True
        if st is None:
            st = self.types[type_url] = _SotwType()
        names = frozenset(req.resource_names)
        wildcard = "*" in names or (not names and type_url in WILDCARD_TYPES)
        st.names = None if wildcard else names
        # A request without a nonce asks afresh: answer it even if nothing changed.
        resp = self._response(type_url, st, force=not req.response_nonce)
        if resp is not None:
            out.responses.append(resp)
        return out

    def on_change(self, type_urls: Iterable[str]) -> list[d.DiscoveryResponse]:
        out: list[d.DiscoveryResponse] = []
        for type_url in type_urls:
            st = self.types.get(type_url)
            if st is not None:
                resp = self._response(type_url, st, force=False)
                if resp is not None:
                    out.append(resp)
        return out

    def _response(self, type_url: str, st: _SotwType, force: bool) -> d.DiscoveryResponse | None:
        chosen = self.store.select(type_url, st.names)
        digest = _digest(chosen)
        if not chosen and st.names is not None and st.sent is None:
            return None  # named resources that do not exist (yet): the client waits for them
        if digest == st.sent and not force:
            return None
        st.sent, st.nonce = digest, self.nonce()
        resp = d.DiscoveryResponse(
            type_url=type_url, version_info=self.store.version(type_url), nonce=st.nonce
        )
        resp.resources.extend(a for _, a in chosen.values())
        return resp


@dataclass
class _DeltaType:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client has
    nonce: str = ""
    answered: bool = False


class DeltaSession:
    """One Delta (incremental) stream; `only_type` as for SotwSession."""

    def __init__(self, store: Store, nonce: NonceFn, only_type: str | None = None) -> None:
        self.store = store
        self.nonce = nonce
        self.only_type = only_type
        self.types: dict[str, _DeltaType] = {}

    def on_request(self, req: d.DeltaDiscoveryRequest) -> Outcome:
        type_url = req.type_url or self.only_type or ""
        if type_url not in TYPE_URLS or (self.only_type and type_url != self.only_type):
            return Outcome(unknown_type=True)
        out = Outcome()
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = _DeltaType()
            st.wildcard = not req.resource_names_subscribe  # legacy wildcard
            st.known.update(req.initial_resource_versions)
        if req.response_nonce:
            if req.response_nonce != st.nonce:
                out.stale = True  # subscription changes below still count (Delta nonces only ACK)
            elif req.HasField("error_detail"):
                out.nack = req.error_detail.message or "(no message)"
            else:
                out.ack = True
        for name in req.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
            else:
                st.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
            else:
                st.names.discard(name)
                st.known.pop(name, None)  # no removal is sent for what the client dropped
        resp = self._response(type_url, st)
        if resp is not None:
            out.responses.append(resp)
        return out

    def on_change(self, type_urls: Iterable[str]) -> list[d.DeltaDiscoveryResponse]:
        out: list[d.DeltaDiscoveryResponse] = []
        for type_url in type_urls:
            st = self.types.get(type_url)
            if st is not None:
                resp = self._response(type_url, st)
                if resp is not None:
                    out.append(resp)
        return out

    def _response(self, type_url: str, st: _DeltaType) -> d.DeltaDiscoveryResponse | None:
        chosen = self.store.select(type_url, None if st.wildcard else frozenset(st.names))
        changed = {n: p for n, p in chosen.items() if st.known.get(n) != p[0]}
        removed = sorted(n for n in st.known if n not in chosen and (st.wildcard or n in st.names))
        # A wildcard subscription is answered once even when empty, so that the client's init ends.
        if not changed and not removed and (st.answered or not st.wildcard):
            return None
        st.answered, st.nonce = True, self.nonce()
        resp = d.DeltaDiscoveryResponse(
            type_url=type_url, system_version_info=self.store.version(type_url), nonce=st.nonce
        )
        for name, (version, packed) in changed.items():
            resp.resources.add(name=name, version=version).resource.CopyFrom(packed)
            st.known[name] = version
        for name in removed:
            del st.known[name]
        resp.removed_resources.extend(removed)
        return resp


def rest_response(
    store: Store, req: d.DiscoveryRequest, type_url: str, nonce: str
) -> d.DiscoveryResponse | None:
    """The answer to one REST-JSON poll of `type_url`, or None for 304 Not Modified.  The version
    is the type's counter plus a digest of the names chosen, so new names are never a false 304."""
    names = frozenset(req.resource_names)
    wildcard = "*" in names or (not names and type_url in WILDCARD_TYPES)
    chosen = store.select(type_url, None if wildcard else names)
    version = f"{store.version(type_url)}-{_digest(chosen)}"
    if req.version_info == version:
        return None
    resp = d.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
    resp.resources.extend(a for _, a in chosen.values())
    return resp
