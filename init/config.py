"""InitConfig: the init program's settings, with istio-iptables' names, meanings and defaults (pure).

Owns: istio's `config.Config` (tools/common/config/config.go) as a frozen dataclass, how it is filled
(`DefaultConfig`, flags and env from flags.py, then `FillConfigFromEnvironment`: owner groups and
the IPv4 loopback CIDR from env only, the proxy uid from ENVOY_USER, IPv6 detected from the pod's
first address, DNS servers from /etc/resolv.conf), istio's `Validate`, and the small interpreters
istio shares between its iptables and nftables builders (`Split`, `SeparateV4V6`,
`ParseInterceptFilter`).  Values stay strings where istio keeps strings, so that they reach the rules
verbatim.  Host facts (users, addresses, resolv.conf) come in through `HostFacts`; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from init import flags

DEFAULT_PROXY_UID = "1337"
MAX_OWNER_GROUPS_INCLUDE = 64  # istio tools/common/config/validation.go maxOwnerGroupsInclude
_PORT = re.compile(r"^\d{1,5}(?::\d{1,5})?$")
_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


class ConfigError(Exception):
    """Settings istio-iptables would refuse (it exits 1), or that cannot make valid rules."""


class HostFacts(Protocol):
    """What FillConfigFromEnvironment reads from the machine; __main__ passes the real one."""

    def user_uid(self, name: str) -> str | None: ...

    def interface_addresses(self) -> Sequence[str]: ...  # every interface address, in kernel dump order

    def resolv_conf(self) -> str: ...  # raises OSError when unreadable


@dataclass(frozen=True, slots=True)
class InitConfig:
    proxy_port: str = "15001"
    inbound_capture_port: str = "15006"
    inbound_tunnel_port: str = "15008"
    proxy_uid: str = DEFAULT_PROXY_UID  # comma separated, as istio
    proxy_gid: str = DEFAULT_PROXY_UID
    inbound_interception_mode: str = ""  # "TPROXY" or anything else (REDIRECT)
    inbound_tproxy_mark: str = "1337"
    inbound_tproxy_route_table: str = "133"
    inbound_ports_include: str = ""
    inbound_ports_exclude: str = ""
    owner_groups_include: str = "*"
    owner_groups_exclude: str = ""
    outbound_ports_include: str = ""
    outbound_ports_exclude: str = ""
    outbound_ip_ranges_include: str = ""
    outbound_ip_ranges_exclude: str = ""
    reroute_virtual_interfaces: str = ""
    exclude_interfaces: str = ""
    iptables_probe_port: int = 15002
    probe_timeout: float = 5.0
    dry_run: bool = False
    skip_rule_apply: bool = False
    run_validation: bool = False
    redirect_dns: bool = False
    drop_invalid: bool = False
    capture_all_dns: bool = False
    enable_ipv6: bool = False
    dns_servers_v4: tuple[str, ...] = ()
    dns_servers_v6: tuple[str, ...] = ()
    network_namespace: str = ""
    cni_mode: bool = False
    dual_stack: bool = False
    host_ip: str = ""
    host_ipv4_loopback_cidr: str = "127.0.0.1/32"
    reconcile: bool = False
    cleanup_only: bool = False
    force_apply: bool = False
    native_nftables: bool = False
    force_iptables_binary: str = ""
    log_output_level: str = "default:info"
    log_targets: tuple[str, ...] = field(default=("stdout",))

    @property
    def tproxy(self) -> bool:
        return self.inbound_interception_mode == "TPROXY"


# --- istio's shared interpreters (tools/common/config/types.go, config.go) ---------------------------


def split(text: str) -> list[str]:
    """istio `config.Split`: comma separated, empty items dropped."""
    return [s for s in text.split(",") if s] if text else []


@dataclass(frozen=True, slots=True)
class NetworkRange:
    is_wildcard: bool = False
    cidrs: tuple[str, ...] = ()  # as netip.Prefix.String() prints them
    has_loopback: bool = False


def parse_prefix(text: str) -> tuple[int, str, bool]:
    """Go's netip.ParsePrefix: (version, canonical text, address is loopback).

    Like Go, the address bits are kept as written ("10.1.2.3/8" stays so) and a "/bits" is required."""
    addr, slash, bits = text.partition("/")
    if not slash or not bits.isdigit() or (len(bits) > 1 and bits[0] == "0") or "%" in addr:
        raise ConfigError(f'netip.ParsePrefix("{text}"): invalid prefix')
    try:
        iface = ipaddress.ip_interface(f"{addr}/{bits}")
    except ValueError as err:
        raise ConfigError(f'netip.ParsePrefix("{text}"): {err}') from None
    return iface.version, f"{iface.ip.compressed}/{bits}", iface.ip.is_loopback


def separate_v4_v6(cidr_list: str) -> tuple[NetworkRange, NetworkRange]:
    """istio `config.SeparateV4V6`."""
    if cidr_list == "*":
        return NetworkRange(is_wildcard=True), NetworkRange(is_wildcard=True)
    v4: list[str] = []
    v6: list[str] = []
    loop4 = loop6 = False
    for item in split(cidr_list):
        version, canonical, loopback = parse_prefix(item)
        if version == 4:
            v4.append(canonical)
            loop4 = loop4 or loopback
        else:
            v6.append(canonical)
            loop6 = loop6 or loopback
    return NetworkRange(False, tuple(v4), loop4), NetworkRange(False, tuple(v6), loop6)


@dataclass(frozen=True, slots=True)
class InterceptFilter:
    values: tuple[str, ...]
    except_: bool  # True: intercept all except values; False: intercept only values


def parse_intercept_filter(include: str, exclude: str) -> InterceptFilter:
    """istio `config.ParseInterceptFilter` (owner groups)."""
    if include == "*":
        return InterceptFilter(tuple(split(exclude)), True)
    return InterceptFilter(tuple(split(include)), False)


def effective_redirect_dns(cfg: InitConfig) -> bool:
    """capture/run.go: REDIRECT_DNS without CAPTURE_ALL_DNS and without servers disables DNS capture."""
    return cfg.redirect_dns and (cfg.capture_all_dns or bool(cfg.dns_servers_v4) or bool(cfg.dns_servers_v6))


# --- filling the config --------------------------------------------------------------------------------


def detect_host_ip(addresses: Sequence[str], dual_stack: bool) -> tuple[str, bool]:
    """istio `getLocalIP`: the first address that is not loopback or link-local; with dual stack, keep
    looking for an IPv6 one.  Returns (address, is IPv6)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    is_v6 = False
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("/")[0].split("%")[0])
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # Go's Unmap()
        if ip.is_loopback or ip.is_link_local or _link_local_multicast(ip):
            continue
        is_v6 = ip.version == 6
        found.append(ip)
        if not dual_stack:
            return str(ip), is_v6
        if is_v6:
            break
    if found:
        return str(found[0]), is_v6
    raise ConfigError("no valid local IP address found")


def _link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 4:
        return ip in ipaddress.ip_network("224.0.0.0/24")
    return ip.is_multicast and (int(ip) >> 112) & 0xF == 2


def resolv_conf_servers(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`nameserver` lines of resolv.conf split into IPv4 and IPv6 (istio IPsSplitV4V6)."""
    v4: list[str] = []
    v6: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            _add_server(parts[1], v4, v6)
    return tuple(v4), tuple(v6)


def _add_server(text: str, v4: list[str], v6: list[str]) -> None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return  # istio skips what netip.ParseAddr rejects
    (v4 if ip.version == 4 else v6).append(text)


def from_flags(values: Mapping[str, flags.FlagValue], env: Mapping[str, str], host: HostFacts) -> InitConfig:
    """Flag values (flags.parse) -> InitConfig, then FillConfigFromEnvironment and Validate."""

    def s(name: str) -> str:
        return str(values[name])

    def b(name: str) -> bool:
        return bool(values[name])

    proxy_uid = s("proxy-uid")
    if not proxy_uid:  # default to ENVOY_USER's uid, else 1337
        proxy_uid = host.user_uid(env.get("ENVOY_USER", "istio-proxy")) or DEFAULT_PROXY_UID
    proxy_gid = s("proxy-gid") or proxy_uid  # "For TPROXY as its uid and gid are same."
    ipv6_switch = s("enable-inbound-ipv6")
    if ipv6_switch:
        try:
            enable_ipv6 = flags.parse_bool(ipv6_switch)
        except ValueError:
            raise ConfigError(f"invalid ENABLE_INBOUND_IPV6 {ipv6_switch!r}") from None
        host_ip = ""
    else:
        host_ip, enable_ipv6 = detect_host_ip(host.interface_addresses(), b("dual-stack"))
    dns4: tuple[str, ...] = ()
    dns6: tuple[str, ...] = ()
    if b("redirect-dns") and not b("capture-all-dns"):
        if s("dns-servers"):
            v4: list[str] = []
            v6: list[str] = []
            for server in split(s("dns-servers")):
                _add_server(server, v4, v6)
            dns4, dns6 = tuple(v4), tuple(v6)
        else:
            try:
                dns4, dns6 = resolv_conf_servers(host.resolv_conf())
            except OSError as err:
                raise ConfigError(f"failed to load /etc/resolv.conf: {err}") from None
    log_targets = values["log_target"]
    cfg = InitConfig(
        proxy_port=s("envoy-port"),
        inbound_capture_port=s("inbound-capture-port"),
        inbound_tunnel_port=s("inbound-tunnel-port"),
        proxy_uid=proxy_uid,
        proxy_gid=proxy_gid,
        inbound_interception_mode=s("istio-inbound-interception-mode"),
        inbound_tproxy_mark=s("istio-inbound-tproxy-mark"),
        inbound_tproxy_route_table=s("istio-inbound-tproxy-route-table"),
        inbound_ports_include=s("istio-inbound-ports"),
        inbound_ports_exclude=s("istio-local-exclude-ports"),
        owner_groups_include=env.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
        owner_groups_exclude=env.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
        outbound_ports_include=s("istio-outbound-ports"),
        outbound_ports_exclude=s("istio-local-outbound-ports-exclude"),
        outbound_ip_ranges_include=s("istio-service-cidr"),
        outbound_ip_ranges_exclude=s("istio-service-exclude-cidr"),
        reroute_virtual_interfaces=s("kube-virt-interfaces"),
        exclude_interfaces=s("istio-exclude-interfaces"),
        iptables_probe_port=int(values["iptables-probe-port"]),  # type: ignore[arg-type]
        probe_timeout=float(values["probe-timeout"]),  # type: ignore[arg-type]
        dry_run=b("dry-run"),
        skip_rule_apply=b("skip-rule-apply"),
        run_validation=b("run-validation"),
        redirect_dns=b("redirect-dns"),
        drop_invalid=b("drop-invalid"),
        capture_all_dns=b("capture-all-dns"),
        enable_ipv6=enable_ipv6,
        dns_servers_v4=dns4,
        dns_servers_v6=dns6,
        network_namespace=s("network-namespace"),
        cni_mode=b("cni-mode"),
        dual_stack=b("dual-stack"),
        host_ip=host_ip,
        host_ipv4_loopback_cidr=env.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"),
        reconcile=b("reconcile"),
        cleanup_only=b("cleanup-only") or b("cleanup"),
        force_apply=b("force-apply"),
        native_nftables=b("native-nftables"),
        force_iptables_binary=s("force-iptables-binary"),
        log_output_level=s("log_output_level"),
        log_targets=log_targets if isinstance(log_targets, tuple) else (str(log_targets),),
    )
    validate(cfg)
    return cfg


def validate(cfg: InitConfig) -> None:
    """istio `Config.Validate`, plus checks that keep a bad value from reaching iptables half-way
    (istio lets iptables-restore find those; we refuse them before touching anything)."""
    groups = parse_intercept_filter(cfg.owner_groups_include, cfg.owner_groups_exclude)
    if not groups.except_ and len(groups.values) > MAX_OWNER_GROUPS_INCLUDE:
        raise ConfigError(
            "number of owner groups whose outgoing traffic should be redirected to Envoy cannot exceed "
            f"{MAX_OWNER_GROUPS_INCLUDE}, got {len(groups.values)}"
        )
    if cfg.force_iptables_binary not in ("", "legacy", "nft"):
        raise ConfigError(f"invalid FORCE_IPTABLES_BINARY value {cfg.force_iptables_binary!r}")
    version, _, loopback = parse_prefix(cfg.host_ipv4_loopback_cidr)
    bits = int(cfg.host_ipv4_loopback_cidr.partition("/")[2])
    if version != 4 or not loopback:
        raise ConfigError(f"expected valid IPv4 loopback address in CIDR {cfg.host_ipv4_loopback_cidr}")
    if not 8 <= bits <= 32:
        raise ConfigError(f"expected CIDR {cfg.host_ipv4_loopback_cidr} to have mask in range [8, 32]")
    for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
        _check_port(name, getattr(cfg, name), ranges=False)
    for name in ("inbound_ports_exclude", "outbound_ports_include", "outbound_ports_exclude"):
        for port in split(getattr(cfg, name)):
            _check_port(name, port, ranges=not cfg.native_nftables)  # nft spells ranges a-b
    if cfg.inbound_ports_include != "*":
        for port in split(cfg.inbound_ports_include):
            _check_port("inbound_ports_include", port, ranges=not cfg.native_nftables)
    for name in ("inbound_tproxy_mark", "inbound_tproxy_route_table"):
        value = getattr(cfg, name)
        if not value.isdigit() or int(value) > 0xFFFFFFFF:
            raise ConfigError(f"{name}: {value!r} is not a 32-bit unsigned number")
    for name in ("proxy_uid", "proxy_gid", "reroute_virtual_interfaces", "exclude_interfaces"):
        for item in split(getattr(cfg, name)):
            if not _NAME.match(item) or ("interfaces" in name and len(item) > 15):
                raise ConfigError(f"{name}: invalid value {item!r}")
    v4_ex, _ = separate_v4_v6(cfg.outbound_ip_ranges_exclude)
    if v4_ex.is_wildcard:
        raise ConfigError("invalid value for OUTBOUND_IP_RANGES_EXCLUDE")
    separate_v4_v6(cfg.outbound_ip_ranges_include)


def _check_port(name: str, text: str, *, ranges: bool) -> None:
    ok = bool(_PORT.match(text)) and (ranges or ":" not in text)  # "a:b" is an iptables port range
    if ok and all(int(p) <= 65535 for p in text.split(":")):
        return
    raise ConfigError(f"{name}: invalid port {text!r}")
