"""istio's capture test cases (tools/istio-{iptables,nftables}/pkg/capture/run_test.go
`getCommonTestCases` over `constructTestConfig`), as InitConfig overrides, and the golden loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from init.config import InitConfig

GOLDEN = Path(__file__).parent / "golden"

# constructTestConfig(): ports 15001/15006/15008, uid=gid=1337, mark 1337, table 133, owner groups "*",
# loopback 127.0.0.1/32 - which are InitConfig's defaults.
BASE = InitConfig()

CASES: dict[str, dict[str, Any]] = {
    "ipv6-empty-inbound-ports": {"inbound_ports_include": "", "enable_ipv6": True},
    "ip-range": {
        "outbound_ip_ranges_exclude": "1.1.0.0/16",
        "outbound_ip_ranges_include": "9.9.0.0/16",
        "dry_run": True,
        "redirect_dns": True,
        "enable_ipv6": False,
        "proxy_gid": "1,2",
        "proxy_uid": "3,4",
        "dns_servers_v4": ("127.0.0.53",),
    },
    "tproxy": {
        "inbound_interception_mode": "TPROXY",
        "inbound_ports_include": "*",
        "outbound_ip_ranges_exclude": "1.1.0.0/16",
        "outbound_ip_ranges_include": "9.9.0.0/16",
        "dry_run": True,
        "redirect_dns": True,
        "dns_servers_v4": ("127.0.0.53",),
        "proxy_gid": "1337",
        "proxy_uid": "1337",
        "exclude_interfaces": "not-istio-nic",
        "enable_ipv6": True,
    },
    "ipv6-inbound-ports": {"inbound_ports_include": "4000,5000", "enable_ipv6": True},
    "ipv6-virt-interfaces": {
        "inbound_ports_include": "4000,5000",
        "reroute_virtual_interfaces": "eth0,eth1",
        "enable_ipv6": True,
    },
    "ipv6-ipnets": {
        "inbound_ports_include": "4000,5000",
        "inbound_ports_exclude": "6000,7000,",
        "reroute_virtual_interfaces": "eth0,eth1",
        "outbound_ip_ranges_exclude": "2001:db8::/32",
        "outbound_ip_ranges_include": "2001:db8::/32",
        "enable_ipv6": True,
    },
    "ipv6-uid-gid": {
        "inbound_ports_include": "4000,5000",
        "inbound_ports_exclude": "6000,7000",
        "reroute_virtual_interfaces": "eth0,eth1",
        "proxy_gid": "1,2",
        "proxy_uid": "3,4",
        "enable_ipv6": True,
        "outbound_ip_ranges_exclude": "2001:db8::/32",
        "outbound_ip_ranges_include": "2001:db8::/32",
    },
    "ipv6-outbound-ports": {
        "inbound_ports_include": "",
        "outbound_ports_include": "32000,31000",
        "enable_ipv6": True,
    },
    "empty": {},
    "kube-virt-interfaces": {"reroute_virtual_interfaces": "eth1,eth2", "outbound_ip_ranges_include": "*"},
    "ipnets": {"outbound_ip_ranges_include": "10.0.0.0/8"},
    "ipnets-with-kube-virt-interfaces": {
        "reroute_virtual_interfaces": "eth1,eth2",
        "outbound_ip_ranges_include": "10.0.0.0/8",
    },
    "inbound-ports-include": {"inbound_ports_include": "32000,31000"},
    "inbound-ports-wildcard": {"inbound_ports_include": "*"},
    "inbound-ports-tproxy": {"inbound_ports_include": "32000,31000", "inbound_interception_mode": "TPROXY"},
    "inbound-ports-wildcard-tproxy": {"inbound_ports_include": "*", "inbound_interception_mode": "TPROXY"},
    "inbound-ports-empty-tproxy": {
        "inbound_ports_include": "",
        "inbound_interception_mode": "TPROXY",
    },  # nft only
    "dns-uid-gid": {
        "redirect_dns": True,
        "dns_servers_v4": ("127.0.0.53",),
        "dns_servers_v6": ("::127.0.0.53",),
        "proxy_gid": "1,2",
        "proxy_uid": "3,4",
        "enable_ipv6": True,
    },
    "ipv6-dns-uid-gid": {"enable_ipv6": True, "redirect_dns": True, "proxy_gid": "1,2", "proxy_uid": "3,4"},
    "outbound-owner-groups": {"owner_groups_include": "java,202"},
    "outbound-owner-groups-exclude": {"owner_groups_exclude": "888,ftp"},
    "ipv6-dns-outbound-owner-groups": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "owner_groups_include": "java,202",
    },
    "ipv6-dns-outbound-owner-groups-exclude": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "owner_groups_exclude": "888,ftp",
    },
    "outbound-ports-include": {"outbound_ports_include": "32000,31000"},
    "loopback-outbound-iprange": {
        "outbound_ip_ranges_include": "127.1.2.3/32",
        "dry_run": True,
        "redirect_dns": True,
        "dns_servers_v4": ("127.0.0.53",),
        "enable_ipv6": False,
        "proxy_gid": "1,2",
        "proxy_uid": "3,4",
    },
    "basic-exclude-nic": {"exclude_interfaces": "not-istio-nic"},
    "drop-invalid": {"drop_invalid": True},
    "host-ipv4-loopback-cidr": {"host_ipv4_loopback_cidr": "127.0.0.1/8"},
}


def config(name: str) -> InitConfig:
    return dataclasses.replace(BASE, **CASES[name])


def golden(kind: str, name: str) -> str:
    """The golden file without our provenance header."""
    text = (GOLDEN / kind / f"{name}.golden").read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("# "))


def golden_names(kind: str) -> list[str]:
    return sorted(p.stem for p in (GOLDEN / kind).glob("*.golden"))
