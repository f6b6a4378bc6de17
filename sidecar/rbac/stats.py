"""RBAC counters (Filters::Common::RBAC::generateStats), shared by the HTTP and the network filter.

Names, checked against Envoy 1.40: `<prefix>rbac.[<rules_prefix>.]allowed|denied`,
`<prefix>rbac.[<shadow_prefix>.]shadow_allowed|shadow_denied` (the shadow prefix hangs off
`rbac.`, not off the rules prefix), and per policy, made on first use,
`<rules part>policy.<name>.allowed|denied`, `<shadow part>policy.<name>.shadow_allowed|shadow_denied`.
The HTTP filter's prefix is `http.<stat_prefix>.`; the network filter's is its own stat_prefix.

The counters are `Stats.counter` handles, shared by name: two filters with the same names add up
(Istio puts an ALLOW and a DENY filter in one connection manager, both counting into
http.<stat_prefix>.rbac.allowed), as Envoy's counters, which are identified by name, do."""

from __future__ import annotations

from typing import Protocol

from sidecar.observe.stats import Stats


def stat_join(prefix: str, token: str) -> str:
    """Envoy::statPrefixJoin: '.' between the two unless the prefix is empty or ends with one."""
    if not prefix:
        return token
    if prefix.endswith("."):
        return prefix + token
    return f"{prefix}.{token}"


class Inc(Protocol):
    def inc(self, n: int = 1) -> None: ...


class _Count:
    """A counter when there is no stats registry (unit tests)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class RbacStats:
    """The four counters of one RBAC filter config, and its per-policy counters made on first use."""

    __slots__ = (
        "_per_policy",
        "allowed",
        "denied",
        "names",
        "policy_prefix",
        "shadow_allowed",
        "shadow_denied",
        "shadow_policy_prefix",
        "stats",
    )

    def __init__(
        self, stats: Stats | None, prefix: str, rules_prefix: str = "", shadow_prefix: str = ""
    ) -> None:
        base = stat_join(prefix, "rbac.")
        rules = stat_join(base, rules_prefix)
        shadow = stat_join(base, shadow_prefix)
        self.stats = stats
        self.policy_prefix = stat_join(rules, "policy.")
        self.shadow_policy_prefix = stat_join(shadow, "policy.")
        self._per_policy: dict[str, Inc] = {}
        self.names = {
            "allowed": stat_join(rules, "allowed"),
            "denied": stat_join(rules, "denied"),
            "shadow_allowed": stat_join(shadow, "shadow_allowed"),
            "shadow_denied": stat_join(shadow, "shadow_denied"),
        }
        self.allowed = self._counter(self.names["allowed"])
        self.denied = self._counter(self.names["denied"])
        self.shadow_allowed = self._counter(self.names["shadow_allowed"])
        self.shadow_denied = self._counter(self.names["shadow_denied"])

    def _counter(self, name: str) -> Inc:
        return self.stats.counter(name) if self.stats is not None else _Count()

    def policy(self, policy_id: str, suffix: str, shadow: bool = False) -> None:
        """incPolicyAllowed & co: `<policy prefix><policy_id>.<suffix>`."""
        name = (self.shadow_policy_prefix if shadow else self.policy_prefix) + policy_id + "." + suffix
        c = self._per_policy.get(name)
        if c is None:
            c = self._per_policy[name] = self._counter(name)
        c.inc()

    def value(self, name: str) -> int:
        """A counter's value in this process by its short name (`allowed`, `shadow_denied` ...) or its
        full stat name (per-policy ones); 0 for one never counted.  For tests."""
        full = self.names.get(name, name)
        c = self._per_policy.get(full) if name not in self.names else getattr(self, name)
        if c is None:
            return 0
        if isinstance(c, _Count):
            return c.value
        assert self.stats is not None
        return self.stats.value(full)
