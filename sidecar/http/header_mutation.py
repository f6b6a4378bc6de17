"""request/response_headers_to_add and _to_remove at route, virtual host and route config level.

Envoy evaluates each level's HeaderParser (removals, then additions with their append_action) in
order of specificity: by default route, then virtual host, then route configuration, so the least
specific level wins on overwrite; `most_specific_header_mutations_wins` reverses the order
(RouteEntryImplBase::finalizeRequestHeaders).  A weighted cluster's own mutations are the most
specific of all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.http.events import Headers, RequestHead
from sidecar.model.route import NO_MUTATIONS, AppendAction, ClusterWeight, HeaderMutations, HeaderValueOption

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream


def _levels(stream: Stream, cw: ClusterWeight | None) -> list[HeaderMutations]:
    route = stream.route
    vhost = stream.vhost
    rc = stream.rt.route_config
    levels = []
    if cw is not None and not cw.mutations.empty:
        levels.append(cw.mutations)
    if route is not None and route.mutations is not NO_MUTATIONS:
        levels.append(route.mutations)
    if vhost is not None and vhost.mutations is not NO_MUTATIONS:
        levels.append(vhost.mutations)
    if rc.mutations is not NO_MUTATIONS:
        levels.append(rc.mutations)
    if rc.most_specific_header_mutations_wins:
        levels.reverse()
    return levels


def _value(opt: HeaderValueOption, stream: Stream) -> bytes:
    if not opt.dynamic:
        return opt.value
    return expand(opt.value, stream)


def expand(value: bytes, stream: Stream) -> bytes:
    """Expand the %COMMAND% forms Envoy allows in header values (a subset; translate/rds refuses
    the others).  '%%' is a literal percent."""
    out = []
    i = 0
    n = len(value)
    while i < n:
        j = value.find(b"%", i)
        if j < 0:
            out.append(value[i:])
            break
        out.append(value[i:j])
        if value[j : j + 2] == b"%%":
            out.append(b"%")
            i = j + 2
            continue
        k = value.find(b"%", j + 1)
        if k < 0:
            out.append(value[j:])
            break
        out.append(_command(value[j + 1 : k], stream))
        i = k + 1
    return b"".join(out)


def _command(cmd: bytes, stream: Stream) -> bytes:
    conn = stream.conn
    if cmd == b"DOWNSTREAM_REMOTE_ADDRESS":
        return conn.peer_addr
    if cmd == b"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        return conn.peer_ip
    if cmd == b"DOWNSTREAM_LOCAL_ADDRESS":
        return conn.local_addr
    if cmd == b"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
        return conn.local_ip
    if cmd == b"PROTOCOL":
        return b"HTTP/" + stream.head.version
    if cmd.startswith(b"REQ(") and cmd.endswith(b")"):
        name = cmd[4:-1].lower()
        if name == b"host" or name == b":authority":
            return stream.head.authority
        if name == b":path":
            return stream.head.path
        if name == b":method":
            return stream.head.method
        v = stream.head.get(name)
        return v if v is not None else b""
    return b""


def _apply(headers: Headers, m_remove: tuple[bytes, ...], m_add: tuple[HeaderValueOption, ...], stream: Stream) -> Headers:
    if m_remove:
        headers = [h for h in headers if h[0] not in m_remove]
    for opt in m_add:
        value = _value(opt, stream)
        if not value and not opt.keep_empty_value:
            continue
        action = opt.append_action
        name = opt.name
        if action is AppendAction.APPEND_IF_EXISTS_OR_ADD:
            headers.append((name, value))
            continue
        present = False
        for k, _ in headers:
            if k == name:
                present = True
                break
        if action is AppendAction.ADD_IF_ABSENT:
            if not present:
                headers.append((name, value))
        elif present:
            # OVERWRITE_IF_EXISTS(_OR_ADD): replace the first occurrence, drop the others.
            out: Headers = []
            done = False
            for h in headers:
                if h[0] == name:
                    if not done:
                        out.append((name, value))
                        done = True
                else:
                    out.append(h)
            headers = out
        elif action is AppendAction.OVERWRITE_IF_EXISTS_OR_ADD:
            headers.append((name, value))
    return headers


def apply_request_mutations(head: RequestHead, stream: Stream, cw: ClusterWeight | None) -> None:
    if not stream.rt.has_mutations:
        return
    for m in _levels(stream, cw):
        if m.request_headers_to_add or m.request_headers_to_remove:
            head.headers = _apply(head.headers, m.request_headers_to_remove, m.request_headers_to_add, stream)


def apply_response_mutations(headers: Headers, stream: Stream, cw: ClusterWeight | None) -> None:
    """Mutates `headers` in place (the caller owns the list)."""
    if not stream.rt.has_mutations:
        return
    for m in _levels(stream, cw):
        if m.response_headers_to_add or m.response_headers_to_remove:
            new = _apply(headers, m.response_headers_to_remove, m.response_headers_to_add, stream)
            if new is not headers:
                headers[:] = new
