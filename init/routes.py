"""Netlink set-up that goes with the rules (pyroute2): TPROXY policy routing and the ::6 address.

Owns: istio tools/common/tproxy/run_linux.go `ConfigureRoutes`:
  - with IPv6, `ip -6 addr add ::6/128 dev lo` (the inbound passthrough source for IPv6; IPv4 needs
    nothing because all of 127.0.0.0/8 is local);
  - in TPROXY mode with inbound ports, per family `ip rule add fwmark <mark> lookup <table>` and
    `ip route add local default dev lo table <table>`, so that packets marked by ISTIO_DIVERT/TPROXY
    are delivered locally, to the transparent listener.
Adding is idempotent (what exists is kept, like istio's ignoreExists); `remove` deletes exactly those
entries when present.  Must not know about iptables or nftables.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from init.config import InitConfig


class RouteError(Exception):
    """A netlink request failed."""


def _families(cfg: InitConfig) -> list[int]:
    return [socket.AF_INET, socket.AF_INET6] if cfg.enable_ipv6 else [socket.AF_INET]


def _wants_tproxy(cfg: InitConfig) -> bool:
    return bool(cfg.inbound_ports_include) and cfg.tproxy


def _ipr() -> Any:
    from pyroute2 import IPRoute  # imported here: the iptables-only path does not pay for it

    return IPRoute()


def _lo(ipr: Any) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise RouteError("failed to find 'lo' link")
    return int(found[0])


def _has_rule(ipr: Any, family: int, mark: int, table: int) -> bool:
    for rule in ipr.get_rules(family=family):
        if rule.get_attr("FRA_FWMARK") == mark and (rule.get_attr("FRA_TABLE") or rule.get("table")) == table:
            return True
    return False


def _has_route(ipr: Any, family: int, table: int) -> bool:
    return any(r["dst_len"] == 0 for r in ipr.get_routes(family=family, table=table))


def configure(cfg: InitConfig) -> None:
    """istio ConfigureRoutes (skipped in dry-run by the caller)."""
    if not cfg.enable_ipv6 and not _wants_tproxy(cfg):
        return  # nothing to do: do not even open a netlink socket
    ipr = _ipr()
    try:
        lo = _lo(ipr)
        if cfg.enable_ipv6 and not _has_v6_six(ipr, lo):
            _ignore_exists(
                lambda: ipr.addr("add", index=lo, address="::6", prefixlen=128, family=socket.AF_INET6)
            )
        if not _wants_tproxy(cfg):
            return
        mark, table = int(cfg.inbound_tproxy_mark), int(cfg.inbound_tproxy_route_table)
        for family in _families(cfg):
            if not _has_rule(ipr, family, mark, table):
                _ignore_exists(lambda f=family: ipr.rule("add", family=f, fwmark=mark, table=table))
            if not _has_route(ipr, family, table):
                dst = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
                _ignore_exists(
                    lambda f=family, d=dst: ipr.route(
                        "add", family=f, dst=d, type="local", scope="host", table=table, oif=lo
                    )
                )
    finally:
        ipr.close()


def remove(cfg: InitConfig) -> None:
    """Undo configure: the fwmark rules and local default routes of our mark and table (whatever the
    mode, so a cleanup without -m TPROXY still finds them), and ::6 on lo when IPv6 is on."""
    ipr = _ipr()
    try:
        lo = _lo(ipr)
        mark, table = int(cfg.inbound_tproxy_mark), int(cfg.inbound_tproxy_route_table)
        for family in (socket.AF_INET, socket.AF_INET6):
            for _ in range(16):  # bounded: duplicates added by hand go too
                if not _has_rule(ipr, family, mark, table):
                    break
                _call(lambda f=family: ipr.rule("del", family=f, fwmark=mark, table=table))
            if _has_route(ipr, family, table):
                dst = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
                _call(
                    lambda f=family, d=dst: ipr.route(
                        "del", family=f, dst=d, type="local", scope="host", table=table, oif=lo
                    )
                )
        if cfg.enable_ipv6 and _has_v6_six(ipr, lo):  # only when configure would have added it
            _call(lambda: ipr.addr("del", index=lo, address="::6", prefixlen=128, family=socket.AF_INET6))
    finally:
        ipr.close()


def _has_v6_six(ipr: Any, lo: int) -> bool:
    return any(a.get_attr("IFA_ADDRESS") == "::6" for a in ipr.get_addr(family=socket.AF_INET6, index=lo))


def _call(fn: Any) -> None:
    try:
        fn()
    except Exception as err:  # pyroute2 raises NetlinkError (an OSError subclass) and others
        raise RouteError(f"netlink: {err}") from None


def _ignore_exists(fn: Any) -> None:
    try:
        fn()
    except Exception as err:
        if getattr(err, "code", None) == errno.EEXIST or "exists" in str(err).lower():
            return
        raise RouteError(f"netlink: {err}") from None
