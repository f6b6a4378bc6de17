"""The xDS protocol state of one stream, sans-IO: subscriptions, versions, nonces, ACK and NACK.

`XdsState` is Envoy's GrpcMux (grpc_mux_impl.cc for State of the World, new_grpc_mux_impl.cc and
delta_subscription_state.cc for Delta) without the I/O.  Events in: `watch`/`pause`/`resume` from
the runtime, `connected`/`disconnected` and `receive` from the adapter.  Output: `take_requests()`
(DiscoveryRequest or DeltaDiscoveryRequest messages to write, in order) and `expire(now)` (initial
fetch timeouts).  It owns no socket, no clock and no translation: the adapter (client.py, rest.py)
moves the messages and calls the runtime's `apply`.

The `apply` contract (all-or-nothing per response).  For each response the adapter calls
`apply(update) -> Sequence[Rejected]` with an `Update`: the resources that are new or changed since
the last accepted response of that type (decoded messages by name), the names removed, and the
version.  An empty result means everything was applied and commits the update (ACK).  A non-empty
result means nothing was applied and the previous configuration keeps serving; the update is
discarded and the response NACKed with the previous version and an error_detail naming each
resource and field.  `apply` must never half-apply: validate everything first, then swap.
Exception, Envoy's per-resource acceptance of CDS and LDS: `apply` may return a `Partial` (the
errors, each naming its resource): the other resources and the removals are committed, the response
is still NACKed (the version stays the previous one) with the refused resources' errors.

Behaviour copied from Envoy (checked against envoy 1.40 on tests/support/fake_xds.py):
- The node goes on the first request of each stream, and on every request unless
  set_node_on_first_message_only (both SotW and Delta).
- ACK = version_info + response_nonce of the response; NACK = the previous version_info, the
  response's nonce and error_detail {code: 13 (INTERNAL, what Envoy sends), message}.
- Every response is processed in order and acknowledged with its own nonce: Envoy's client does not
  drop responses by nonce (judging a request stale is the server's job, xDS protocol "nonce").
- Requests leave in the order their type became pending.  A request made while a response is being
  applied (an RDS name an LDS update references) goes before that response's ACK, as Envoy's pause
  around onConfigUpdate orders them; on a new stream every subscription is re-sent, CDS, EDS, LDS,
  RDS, SDS first.  A paused type (Envoy pauses CDS while clusters warm) holds its requests.
- SotW LDS/CDS responses are complete sets (absent = removed); other types are by name and a name
  absent from a response is unchanged.  A non-wildcard type with no names left sends an empty
  resource_names request; a later response with resources for it is re-requested at the old version.
- Delta: legacy wildcard (empty subscribe list) for LDS/CDS, resource_names_subscribe/unsubscribe
  for changes, initial_resource_versions on the first request of every stream."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401  (registers the type in the pool)
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2  # noqa: F401
from envoy.config.route.v3 import route_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2  # noqa: F401
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RESOURCE = _PREFIX + "envoy.service.discovery.v3.Resource"
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
# Envoy subscribes in this order at start-up (CDS, then EDS of its clusters, then LDS, then RDS of
# its listeners, secrets on the way); a new stream re-sends them in the same order.
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
INTERNAL = 13  # google.rpc.Code.INTERNAL, Envoy's error_detail.code in a NACK
MAX_ERROR_BYTES = 4096  # Envoy truncates error_detail.message (Config::Utility::truncateGrpcStatusMessage)

# The Envoy stat names of SubscriptionStats (`stats.block(obj, prefix, COUNTERS, GAUGES)`).  `version`
# is Envoy's uint64 xxHash64 of version_info: it does not fit a signed 64-bit stats slot, so it is kept
# apart (UINT64_GAUGES) for a publisher that can show it unsigned.
COUNTERS = ("update_attempt", "update_success", "update_rejected", "update_failure", "init_fetch_timeout")
GAUGES = ("update_time",)
UINT64_GAUGES = ("version",)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a resource was refused: its name ("" for the whole response), the field path, the reason."""

    resource: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.resource}: {where}{self.reason}" if self.resource else f"{where}{self.reason}"


class Partial(list[Rejected]):
    """`apply`'s answer when some resources were applied and others refused (Envoy's
    CdsApiHelper/LdsApiImpl::onConfigUpdate): every resource but the ones the errors name is kept,
    and the update's removals, and the response is NACKed with the errors."""


@dataclass(frozen=True, slots=True)
class Update:
    """One response to apply.  `updated` holds decoded messages (Listener, Cluster, ...) that are new
    or changed since the last accepted response of this type; `removed` the names that went away."""

    type_url: str
    version: str
    nonce: str
    updated: Mapping[str, Any]
    removed: frozenset[str]
    # What accepting commits: name -> (digest, Delta resource version); the stream epoch.
    _commit: Mapping[str, tuple[bytes, str]] = field(default_factory=dict, repr=False, compare=False)
    _epoch: int = field(default=0, repr=False, compare=False)

    @property
    def received(self) -> frozenset[str]:
        """Every resource name the response carried, changed or not (per-resource stats count
        each one, as Envoy's per-resource subscriptions do)."""
        return frozenset(self._commit)

    def resource_version(self, name: str) -> str:
        """Delta: the version the server gave resource `name` ("" in SotW, where only `version` exists)."""
        entry = self._commit.get(name)
        return entry[1] if entry is not None else ""


Apply = Callable[[Update], Sequence[Rejected]]


class SubscriptionStats:
    """Envoy's per-subscription counters and gauges (SubscriptionStats in config/subscription.h) as
    plain attributes, so that observe.stats.Stats.block can publish them."""

    __slots__ = ("version_text", *COUNTERS, *GAUGES, *UINT64_GAUGES)

    def __init__(self) -> None:
        self.update_attempt = self.update_success = self.update_rejected = 0
        self.update_failure = self.init_fetch_timeout = 0
        self.version = self.update_time = 0
        self.version_text = ""


class _Sub:
    """The state of one type URL on this stream."""

    __slots__ = (
        "acks",
        "added",
        "by_digest",
        "deadlines",
        "error",
        "fresh",
        "held",
        "names",
        "nonce",
        "stats",
        "type_url",
        "unsubscribed",
        "version",
    )

    def __init__(self, type_url: str, names: frozenset[str] | None) -> None:
        self.type_url = type_url
        self.names = names  # None: the wildcard (all resources of the type)
        self.version = ""  # SotW: version_info of the last accepted response
        self.nonce = ""  # SotW: nonce of the last response on this stream
        self.error: status_pb2.Status | None = None  # SotW: NACK detail for the next request
        self.held: dict[str, tuple[bytes, str]] = {}  # accepted resources: name -> (digest, version)
        self.by_digest: dict[bytes, str] = {}
        self.added: set[str] = set()  # Delta: subscribe/unsubscribe not sent yet
        self.unsubscribed: set[str] = set()
        self.acks: list[tuple[str, status_pb2.Status | None]] = []  # Delta: (nonce, NACK detail)
        self.fresh = True  # nothing sent for this type on the current stream
        self.deadlines: dict[str, float] = {}  # initial fetch: name ("" = wildcard) -> monotonic time
        self.stats = SubscriptionStats()

    def interested(self, name: str) -> bool:
        return self.names is None or name in self.names


def _message_class(type_url: str) -> type[Message] | None:
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None
    cls: type[Message] = message_factory.GetMessageClass(desc)
    return cls


def _name_of(type_url: str, msg: Message) -> str:
    # Every xDS resource is named by `name`, except ClusterLoadAssignment (cluster_name).
    return str(getattr(msg, "cluster_name" if type_url == ENDPOINT else "name", ""))


def _status(errors: Sequence[Rejected]) -> status_pb2.Status:
    text = "\n".join(str(e) for e in errors)
    raw = text.encode()
    if len(raw) > MAX_ERROR_BYTES:
        text = raw[: MAX_ERROR_BYTES - 3].decode(errors="ignore") + "..."
    return status_pb2.Status(code=INTERNAL, message=text)


class XdsState:
    """The protocol state of one xDS stream (ADS carries every type; a non-ADS stream one type).

    `node` is an envoy.config.core.v3.Node; `delta` picks DeltaDiscoveryRequest; `rest` (REST-JSON
    polling) puts the node on every request, as Envoy's HttpSubscriptionImpl does."""

    def __init__(
        self,
        node: Message,
        *,
        delta: bool = False,
        node_on_first_message_only: bool = False,
        rest: bool = False,
    ) -> None:
        self.node = node
        self.delta = delta
        self.rest = rest
        self.node_first_only = node_on_first_message_only and not rest
        self._subs: dict[str, _Sub] = {}
        self._pending: dict[str, None] = {}  # an ordered set of type URLs with something to send
        self._pauses: dict[str, int] = {}
        self._connected = False
        self._first = True  # the next request is the first of the stream
        self._epoch = 0

    # ------------------------------------------------------------------ runtime: what we want
    def watch(
        self,
        type_url: str,
        names: Iterable[str] | None = None,
        *,
        now: float = 0.0,
        initial_fetch_timeout: float = 0.0,
    ) -> None:
        """Set the whole interest in `type_url`: the resource names, or None for the wildcard.  New
        names get an initial fetch deadline (`now + initial_fetch_timeout`; 0 waits forever)."""
        wanted = None if names is None else frozenset(names)
        sub = self._subs.get(type_url)
        if sub is None:
            sub = self._subs[type_url] = _Sub(type_url, wanted)
            sub.stats.update_attempt += 1  # GrpcSubscriptionImpl::start counts an attempt
            new: Iterable[str] = ("",) if wanted is None else wanted
        else:
            if (wanted is None) != (sub.names is None):
                raise ValueError(f"{type_url}: cannot switch between wildcard and named subscriptions")
            if wanted == sub.names or wanted is None or sub.names is None:
                return
            new = wanted - sub.names
            for name in sub.names - wanted:
                self._forget(sub, name)
            for name in new:
                sub.unsubscribed.discard(name)
                sub.added.add(name)
            sub.names = wanted
        if initial_fetch_timeout > 0:
            for name in new:
                sub.deadlines[name] = now + initial_fetch_timeout
        self._mark(type_url)

    def _forget(self, sub: _Sub, name: str) -> None:
        held = sub.held.pop(name, None)
        if held is not None:
            sub.by_digest.pop(held[0], None)
        sub.deadlines.pop(name, None)
        if name in sub.added:
            sub.added.discard(name)  # subscribed and unsubscribed before any request: say nothing
        else:
            sub.unsubscribed.add(name)

    def names(self, type_url: str) -> frozenset[str] | None:
        sub = self._subs.get(type_url)
        return None if sub is None else sub.names

    def stats(self, type_url: str) -> SubscriptionStats | None:
        sub = self._subs.get(type_url)
        return None if sub is None else sub.stats

    def version(self, type_url: str) -> str:
        sub = self._subs.get(type_url)
        return "" if sub is None else sub.version

    def types(self) -> list[str]:
        return list(self._subs)

    def pause(self, type_url: str) -> None:
        """Hold requests of `type_url` (nested pauses count) until `resume`: Envoy pauses CDS while
        clusters warm, so that the control plane sees the ACK once they are ready."""
        self._pauses[type_url] = self._pauses.get(type_url, 0) + 1

    def resume(self, type_url: str) -> None:
        left = self._pauses.get(type_url, 0) - 1
        if left > 0:
            self._pauses[type_url] = left
        else:
            self._pauses.pop(type_url, None)

    # ------------------------------------------------------------------ adapter: the stream
    def connected(self) -> None:
        """A new stream is up: every subscription is re-sent, nonces of the old stream are void."""
        self._connected = True
        self._first = True
        self._epoch += 1
        self._pending.clear()
        rank = {t: i for i, t in enumerate(ORDER)}
        for type_url in sorted(self._subs, key=lambda t: rank.get(t, len(ORDER))):
            sub = self._subs[type_url]
            sub.nonce = ""
            sub.acks.clear()
            sub.fresh = True
            self._pending[type_url] = None

    def disconnected(self, failure: bool = True) -> None:
        """The stream broke or could not be opened (Envoy's onEstablishmentFailure: every subscription
        counts an update_failure), or we closed it ourselves (`failure=False`)."""
        self._connected = False
        self._pending.clear()
        if failure:
            for sub in self._subs.values():
                sub.stats.update_failure += 1
                sub.stats.update_attempt += 1

    def _mark(self, type_url: str) -> None:
        self._pending.setdefault(type_url, None)

    # ------------------------------------------------------------------ adapter: responses
    def receive(self, response: Any) -> Update | None:
        """Check and decode a DiscoveryResponse or DeltaDiscoveryResponse.  Returns the Update to apply,
        or None when there is nothing to apply (the (N)ACK, if any, is already queued)."""
        sub = self._subs.get(response.type_url)
        if sub is None:
            return None  # never subscribed: Envoy drops it ("no current subscribers")
        if self.delta:
            return self._receive_delta(sub, response)
        return self._receive_sotw(sub, response)

    def _receive_sotw(self, sub: _Sub, resp: Any) -> Update | None:
        sub.nonce = resp.nonce  # the next request carries it, ACK or NACK (grpc_mux_impl.cc)
        if sub.names is not None and not sub.names:
            # No watch left (grpc_mux_impl.cc): an empty response is accepted, anything else is asked
            # for again at the old version.
            if resp.resources:
                self._mark(sub.type_url)
            else:
                sub.version = resp.version_info
            return None
        entries: list[tuple[str, bytes, Any]] = []
        errors: list[Rejected] = []
        for i, res in enumerate(resp.resources):
            name = ""
            any_msg = res
            if res.type_url == RESOURCE:
                try:
                    wrapper = discovery_pb2.Resource.FromString(res.value)
                except DecodeError as e:
                    errors.append(Rejected("", f"resources[{i}]", f"cannot decode a Resource wrapper: {e}"))
                    continue
                if not wrapper.HasField("resource"):
                    continue  # a heartbeat
                name, any_msg = wrapper.name, wrapper.resource
            if any_msg.type_url != sub.type_url:
                errors.append(
                    Rejected(
                        name,
                        f"resources[{i}]",
                        f"type URL {any_msg.type_url} does not "
                        f"match the message-wide type URL {sub.type_url}",
                    )
                )
                continue
            entries.append((name, *self._decode(sub, any_msg, i, name, errors)))
        return self._update(sub, resp.version_info, resp.nonce, entries, (), errors, {})

    def _receive_delta(self, sub: _Sub, resp: Any) -> Update | None:
        entries: list[tuple[str, bytes, Any]] = []
        versions: dict[str, str] = {}
        errors: list[Rejected] = []
        seen: set[str] = set()
        for i, res in enumerate(resp.resources):
            if res.name in seen:
                errors.append(
                    Rejected(res.name, f"resources[{i}]", "duplicate name among added/updated resources")
                )
                continue
            seen.add(res.name)
            if not res.HasField("resource"):
                continue  # a heartbeat, or an unresolved alias (delta_subscription_state.cc)
            if res.resource.type_url != sub.type_url:
                errors.append(
                    Rejected(
                        res.name,
                        f"resources[{i}]",
                        f"type URL {res.resource.type_url} "
                        f"does not match the message-wide type URL {sub.type_url}",
                    )
                )
                continue
            if not sub.interested(res.name):
                continue
            versions[res.name] = res.version
            entries.append((res.name, *self._decode(sub, res.resource, i, res.name, errors)))
        for name in resp.removed_resources:
            if name in seen:
                errors.append(
                    Rejected(name, "removed_resources", "duplicate name in added+removed resources")
                )
            seen.add(name)
        removed = [n for n in resp.removed_resources if n in sub.held]
        return self._update(sub, resp.system_version_info, resp.nonce, entries, removed, errors, versions)

    def _decode(
        self, sub: _Sub, any_msg: Any, i: int, name: str, errors: list[Rejected]
    ) -> tuple[bytes, Any]:
        """(digest, decoded message or None when unchanged).  A resource we already hold byte for
        byte is not decoded again: a SotW CDS of 10,000 clusters costs only what changed."""
        digest = hashlib.blake2b(any_msg.value, digest_size=16).digest()
        known = sub.by_digest.get(digest)
        if known is not None and (not name or known == name):
            return digest, None
        cls = _message_class(sub.type_url)
        if cls is None:
            errors.append(Rejected(name, f"resources[{i}]", f"unknown resource type {sub.type_url}"))
            return digest, None
        try:
            return digest, cls.FromString(any_msg.value)
        except DecodeError as e:
            errors.append(Rejected(name, f"resources[{i}]", f"cannot decode {sub.type_url}: {e}"))
            return digest, None

    def _update(
        self,
        sub: _Sub,
        version: str,
        nonce: str,
        entries: list[tuple[str, bytes, Any]],
        removed: Iterable[str],
        errors: list[Rejected],
        versions: dict[str, str],
    ) -> Update | None:
        updated: dict[str, Any] = {}
        commit: dict[str, tuple[bytes, str]] = {}
        for name, digest, msg in entries:
            if msg is not None and not name:
                name = _name_of(sub.type_url, msg)
            elif msg is None and not name:
                name = sub.by_digest.get(digest, "")
            if not name or name in commit:
                if name or msg is not None:
                    why = "duplicate resource name in one response" if name else "resource has no name"
                    errors.append(Rejected(name, "resources", why))
                continue
            if not sub.interested(name):
                continue  # RDS/EDS: a name nobody asked for is ignored, as Envoy's watch map does
            commit[name] = (digest, versions.get(name, ""))
            if msg is not None and sub.held.get(name, (b"",))[0] != digest:
                updated[name] = msg
        if errors:
            self._nack(sub, nonce, errors, self._epoch)
            return None
        gone = set(removed)
        if not self.delta and sub.names is None:
            gone = set(sub.held) - set(commit)  # SotW LDS/CDS: absent means removed
        return Update(sub.type_url, version, nonce, updated, frozenset(gone), commit, self._epoch)

    def settle(self, update: Update, errors: Sequence[Rejected]) -> None:
        """Record what `apply` said about `update`: commit and ACK, or NACK and keep the old state."""
        sub = self._subs.get(update.type_url)
        if sub is None:
            return
        if errors and not isinstance(errors, Partial):
            self._nack(sub, update.nonce, errors, update._epoch)
            return
        refused = {e.resource for e in errors}
        for name in update.removed:
            held = sub.held.pop(name, None)
            if held is not None:
                sub.by_digest.pop(held[0], None)
        for name, (digest, version) in update._commit.items():
            if name in refused:
                continue  # refused: its previous version (if any) stays held
            old = sub.held.get(name)
            if old is not None:
                sub.by_digest.pop(old[0], None)
            sub.held[name] = (digest, version)
            sub.by_digest[digest] = name
            sub.deadlines.pop(name, None)
        if sub.names is None:
            sub.deadlines.clear()
        if errors:
            self._nack(sub, update.nonce, errors, update._epoch)
            return
        sub.version = update.version
        sub.error = None
        st = sub.stats
        st.update_success += 1
        st.update_attempt += 1
        st.version = xxhash.xxh64_intdigest(update.version.encode())
        st.version_text = update.version
        if update._epoch == self._epoch:
            if self.delta:
                sub.acks.append((update.nonce, None))
            self._mark(sub.type_url)

    def on_response(self, response: Any, apply: Apply) -> Sequence[Rejected]:
        """`receive`, `apply`, `settle` in one call, for a synchronous `apply`."""
        update = self.receive(response)
        if update is None:
            return ()
        errors = apply(update)
        self.settle(update, errors)
        return errors

    def reject(self, type_url: str, nonce: str, errors: Sequence[Rejected]) -> None:
        """NACK a response the adapter could not parse (a REST body that is not a DiscoveryResponse)."""
        sub = self._subs.get(type_url)
        if sub is not None:
            self._nack(sub, nonce, errors, self._epoch)

    def _nack(self, sub: _Sub, nonce: str, errors: Sequence[Rejected], epoch: int) -> None:
        sub.stats.update_rejected += 1
        sub.stats.update_attempt += 1
        sub.deadlines.clear()  # Envoy stops initial-fetch timers on a rejection too
        if epoch != self._epoch:
            return
        if self.delta:
            sub.acks.append((nonce, _status(errors)))
        else:
            sub.error = _status(errors)
        self._mark(sub.type_url)

    # ------------------------------------------------------------------ adapter: output
    def take_requests(self) -> list[Any]:
        """The requests to write now, in order (none while disconnected; paused types wait)."""
        if not self._connected:
            return []
        out: list[Any] = []
        for type_url in list(self._pending):
            if type_url in self._pauses:
                continue
            sub = self._subs[type_url]
            del self._pending[type_url]
            out.extend(self._delta_requests(sub) if self.delta else (self._sotw_request(sub),))
        return out

    def request_for(self, type_url: str) -> Any:
        """The SotW request for `type_url` as it stands (REST polls send one on every refresh)."""
        self._pending.pop(type_url, None)
        return self._sotw_request(self._subs[type_url])

    def _with_node(self, req: Any) -> Any:
        if self._first or not self.node_first_only:
            req.node.CopyFrom(self.node)
        self._first = False
        return req

    def _sotw_request(self, sub: _Sub) -> Any:
        req = discovery_pb2.DiscoveryRequest(
            type_url=sub.type_url, version_info=sub.version, response_nonce=sub.nonce
        )
        if sub.names is not None:
            req.resource_names.extend(sorted(sub.names))
        if sub.error is not None:
            req.error_detail.CopyFrom(sub.error)
            sub.error = None
        sub.fresh = False
        return self._with_node(req)

    def _delta_requests(self, sub: _Sub) -> list[Any]:
        out = []
        acks: list[tuple[str, status_pb2.Status | None] | None] = [*sub.acks] or [None]
        sub.acks.clear()
        for i, ack in enumerate(acks):
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=sub.type_url)
            says = ack is not None
            if i == 0 and sub.fresh:
                # First request of the stream: the whole interest, and what we hold.
                sub.fresh = False
                names = () if sub.names is None else sorted(sub.names)
                req.resource_names_subscribe.extend(names)
                for name, (_, version) in sub.held.items():
                    if version:
                        req.initial_resource_versions[name] = version
                sub.added.clear()
                sub.unsubscribed.clear()
                says = says or sub.names is None or bool(names)
            elif i == 0:
                req.resource_names_subscribe.extend(sorted(sub.added))
                req.resource_names_unsubscribe.extend(sorted(sub.unsubscribed))
                says = says or bool(sub.added or sub.unsubscribed)
                sub.added.clear()
                sub.unsubscribed.clear()
            if ack is not None:
                req.response_nonce = ack[0]
                if ack[1] is not None:
                    req.error_detail.CopyFrom(ack[1])
            if says:
                out.append(self._with_node(req))
        return out

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        times = [t for sub in self._subs.values() for t in sub.deadlines.values()]
        return min(times) if times else None

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Initial fetches that timed out: (type_url, name), name "" for a wildcard subscription.
        The runtime stops waiting for them (Envoy: the init target completes, warming ends)."""
        out = []
        for sub in self._subs.values():
            for name, when in list(sub.deadlines.items()):
                if when <= now:
                    del sub.deadlines[name]
                    sub.stats.init_fetch_timeout += 1
                    sub.stats.update_attempt += 1
                    out.append((sub.type_url, name))
        return out
