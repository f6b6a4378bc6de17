"""Path rewrites and redirect locations (Envoy's rewritePathByPrefixOrRegex and Http::Utility::newUri).

Pure string functions, run by the router after `RouteTable.select`: `rewritten_path` /
`rewrite_path` for RouteAction.prefix_rewrite/regex_rewrite (x-envoy-original-path is set when
`rewritten_path` is not None) and `redirect_location` for RedirectAction and the require_tls redirect.  `replace_all` is
RE2::GlobalReplace, which differs from Python's re.sub on empty matches and on the rewrite syntax
(only \\0-\\9 and \\\\ are escapes).  Must not know headers other than the ones passed in."""

from __future__ import annotations

from typing import Any

from sidecar.model.route import RedirectAction, Route, RouteAction
from sidecar.routing.matchers import RegexPathMatcher, path_end

# The redirect a virtual host with require_tls answers (Envoy's SslRedirector): always
# https://<authority as received><path>, 301, no port handling.  Compared by identity.
SSL_REDIRECT_ACTION = RedirectAction(scheme="https", response_code=301)


def _max_submatch(rewrite: str) -> int:
    """Highest \\N group a rewrite refers to (RE2::MaxSubmatch)."""
    best = 0
    i = 0
    n = len(rewrite)
    while i < n:
        if rewrite[i] == "\\":
            i += 1
            if i < n and "0" <= rewrite[i] <= "9":
                best = max(best, ord(rewrite[i]) - 48)
        i += 1
    return best


def _expand(rewrite: str, match: Any, out: list[str]) -> None:
    """RE2::Rewrite: copy `rewrite`, replacing \\N by group N and \\\\ by a backslash.  On any other
    escape RE2 stops there (logging an error) and GlobalReplace keeps what was written so far."""
    i = 0
    n = len(rewrite)
    while i < n:
        c = rewrite[i]
        if c != "\\":
            j = rewrite.find("\\", i)
            if j < 0:
                j = n
            out.append(rewrite[i:j])
            i = j
            continue
        i += 1
        c = rewrite[i] if i < n else ""
        if c and "0" <= c <= "9":
            group = match.group(ord(c) - 48)
            if group:
                out.append(group)
        elif c == "\\":
            out.append("\\")
        else:
            return
        i += 1


def replace_all(pattern: Any, text: str, rewrite: str) -> str:
    """RE2::GlobalReplace(text, pattern, rewrite); `text` unchanged when nothing matched or when the
    rewrite names a group the pattern does not have."""
    if _max_submatch(rewrite) > pattern.groups:
        return text
    out: list[str] = []
    pos = 0
    size = len(text)
    last_end = -1
    count = 0
    # Each pass consumes at least one character or ends, so the loop is bounded by len(text) + 1.
    while pos <= size:
        m = pattern.search(text, pos)
        if m is None:
            break
        start, end = m.span()
        if pos < start:
            out.append(text[pos:start])
        if start == end and start == last_end:
            # No empty match right after the previous match: copy one character and move on.
            if pos < size:
                out.append(text[pos])
            pos += 1
            continue
        _expand(rewrite, m, out)
        pos = last_end = end
        count += 1
    if count == 0:
        return text
    if pos < size:
        out.append(text[pos:])
    return "".join(out)


def rewritten_path(route: Route, action: RouteAction | RedirectAction, path: str) -> str | None:
    """The :path after prefix_rewrite / regex_rewrite of `action`, or None when Envoy rewrites
    nothing (neither is configured, or the regex substitution came out empty).  Envoy sets
    x-envoy-original-path exactly when this is not None, even if the new path equals the old.

    prefix_rewrite replaces what the route matched: the configured prefix/path/
    path_separated_prefix (its length, whatever the case of the request), or for a safe_regex
    route the whole path before the query.  regex_rewrite substitutes on the path before the
    query.  The query string is kept either way."""
    if action.prefix_rewrite:
        if isinstance(route.match.path, RegexPathMatcher):
            matched = path_end(path)
        else:
            matched = len(route.match_prefix)
        return action.prefix_rewrite + path[matched:]
    rewrite = action.regex_rewrite
    if rewrite is not None:
        end = path_end(path)
        new = replace_all(rewrite.pattern, path[:end], rewrite.substitution)
        if new:
            return new + path[end:]
    return None


def rewrite_path(route: Route, action: RouteAction | RedirectAction, path: str) -> str:
    """rewritten_path, or `path` unchanged when nothing is rewritten."""
    new = rewritten_path(route, action, path)
    return path if new is None else new


def _is_https(scheme: str) -> bool:
    return scheme.lower() == "https"


def _is_http(scheme: str) -> bool:
    return scheme.lower() == "http"


def _redirect_host(authority: str, new_scheme: str, new_port: str, forwarded_proto: str) -> str:
    """processRequestHost: drop the request's port when a port_redirect is given, or when the scheme
    changes and the port is the default one of the request's x-forwarded-proto (:80 / :443)."""
    if not authority:
        return authority
    if authority[0] == "[":
        host_end = authority.rfind("]:")
        if host_end >= 0:
            host_end += 1
    else:
        host_end = authority.rfind(":")
    if host_end < 0:
        return authority
    port = authority[host_end:]
    remove = bool(new_port)
    if new_scheme != forwarded_proto:
        remove = remove or (_is_https(forwarded_proto) and port == ":443")
        remove = remove or (_is_http(forwarded_proto) and port == ":80")
    return authority[:host_end] if remove else authority


def redirect_location(
    action: RedirectAction,
    scheme: str,
    authority: str,
    path: str,
    route: Route | None = None,
    forwarded_proto: str | None = None,
) -> str:
    """The Location of a redirect (Http::Utility::newUri), from the request's :scheme, :authority
    and :path.  Pass the matched `route` so that prefix_rewrite / regex_rewrite apply (Envoy
    rewrites :path first, finalizePathHeaderForRedirect); `forwarded_proto` is the request's
    x-forwarded-proto (default: `scheme`), which decides whether a default port is dropped."""
    if action is SSL_REDIRECT_ACTION:
        return "https://" + authority + path
    if route is not None and (action.prefix_rewrite or action.regex_rewrite is not None):
        path = rewrite_path(route, action, path)
    final_scheme = action.scheme or scheme
    port = f":{action.port}" if action.port else ""
    host = action.host or _redirect_host(
        authority, final_scheme, port, scheme if forwarded_proto is None else forwarded_proto
    )
    has_query = False
    if action.path:
        # A query in path_redirect wins over the request's, and strip_query does not touch it.
        has_query = "?" in action.path
        q = path.find("?")
        path = action.path if has_query or q < 0 else action.path + path[q:]
    if not path.startswith("/"):
        path = "/" + path
    if action.strip_query and not has_query:
        q = path.find("?")
        if q >= 0:
            path = path[:q]
    return f"{final_scheme}://{host}{port}{path}"
