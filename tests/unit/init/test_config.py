"""InitConfig from flags, env and host facts: istio's FillConfigFromEnvironment and Validate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from init import config, flags


class FakeHost:
    def __init__(
        self,
        addresses: Sequence[str] = ("127.0.0.1", "::1", "10.1.2.3"),
        users: Mapping[str, str] | None = None,
        resolv: str | None = "nameserver 10.96.0.10\nnameserver fd00::10\nsearch x\n",
    ) -> None:
        self.addresses = list(addresses)
        self.users = dict(users or {})
        self.resolv = resolv

    def user_uid(self, name: str) -> str | None:
        return self.users.get(name)

    def interface_addresses(self) -> Sequence[str]:
        return self.addresses

    def resolv_conf(self) -> str:
        if self.resolv is None:
            raise FileNotFoundError("/etc/resolv.conf")
        return self.resolv


def make(
    argv: Sequence[str] = (), env: Mapping[str, str] | None = None, host: FakeHost | None = None
) -> config.InitConfig:
    env = dict(env or {})
    return config.from_flags(flags.parse(argv, env), env, host or FakeHost())


def test_proxy_uid_from_envoy_user_else_1337_and_gid_follows_uid() -> None:
    assert make().proxy_uid == "1337" and make().proxy_gid == "1337"
    host = FakeHost(users={"istio-proxy": "101", "envoy": "202"})
    assert make(host=host).proxy_uid == "101"
    assert make(env={"ENVOY_USER": "envoy"}, host=host).proxy_gid == "202"
    cfg = make(["-u", "3,4"])
    assert (cfg.proxy_uid, cfg.proxy_gid) == ("3,4", "3,4")
    assert make(["-u", "3", "-g", "5"]).proxy_gid == "5"


def test_env_only_settings() -> None:
    cfg = make(
        env={"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}
    )
    assert cfg.owner_groups_include == "java,202" and cfg.host_ipv4_loopback_cidr == "127.0.0.1/8"
    assert make().owner_groups_include == "*"
    assert make(env={"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888"}).owner_groups_exclude == "888"


@pytest.mark.parametrize(
    ("addresses", "dual", "expected"),
    [
        (["127.0.0.1", "::1", "10.0.0.5", "fd00::5"], False, ("10.0.0.5", False)),
        # istio returns the first address found but reports IPv6 once it has seen one (getLocalIP).
        (["127.0.0.1", "::1", "10.0.0.5", "fd00::5"], True, ("10.0.0.5", True)),
        (["127.0.0.1", "fe80::1", "169.254.1.1", "2001:db8::7"], False, ("2001:db8::7", True)),
        (["::ffff:10.0.0.9"], False, ("10.0.0.9", False)),
        (["10.0.0.5"], True, ("10.0.0.5", False)),
    ],
)
def test_host_ip_detection_like_getlocalip(
    addresses: list[str], dual: bool, expected: tuple[str, bool]
) -> None:
    assert config.detect_host_ip(addresses, dual) == expected
    cfg = make(["--dual-stack"] if dual else [], host=FakeHost(addresses))
    assert (cfg.host_ip, cfg.enable_ipv6) == expected


def test_no_usable_address_is_an_error_unless_ipv6_is_given() -> None:
    with pytest.raises(config.ConfigError, match="no valid local IP"):
        make(host=FakeHost(["127.0.0.1", "::1", "fe80::1"]))
    cfg = make(env={"ENABLE_INBOUND_IPV6": "true"}, host=FakeHost([]))
    assert cfg.enable_ipv6 is True and cfg.host_ip == ""
    assert make(["--enable-inbound-ipv6=false"], host=FakeHost([])).enable_ipv6 is False


def test_dns_servers_from_resolv_conf_only_when_needed() -> None:
    assert make().dns_servers_v4 == ()
    cfg = make(["--redirect-dns"])
    assert (cfg.dns_servers_v4, cfg.dns_servers_v6) == (("10.96.0.10",), ("fd00::10",))
    assert make(["--redirect-dns", "--capture-all-dns"], host=FakeHost(resolv=None)).dns_servers_v4 == ()
    with pytest.raises(config.ConfigError, match=r"resolv\.conf"):
        make(["--redirect-dns"], host=FakeHost(resolv=None))
    cfg = make(["--redirect-dns", "--dns-servers", "1.1.1.1,bogus,2001:db8::1"], host=FakeHost(resolv=None))
    assert (cfg.dns_servers_v4, cfg.dns_servers_v6) == (("1.1.1.1",), ("2001:db8::1",))


def test_cleanup_alias_and_flags_reach_the_config() -> None:
    cfg = make(
        ["--cleanup", "-m", "TPROXY", "-b", "*", "-d", "15020", "--native-nftables", "-t", "7", "-r", "8"]
    )
    assert cfg.cleanup_only and cfg.tproxy and cfg.native_nftables
    assert (cfg.inbound_ports_include, cfg.inbound_ports_exclude) == ("*", "15020")
    assert (cfg.inbound_tproxy_mark, cfg.inbound_tproxy_route_table) == ("7", "8")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["-x", "*"], {}, "OUTBOUND_IP_RANGES_EXCLUDE"),
        (["-i", "10.0.0.0"], {}, "ParsePrefix"),  # Go wants a /bits
        (["-i", "10.0.0.0/33"], {}, "ParsePrefix"),
        (["-i", "10.0.0.0/255.0.0.0"], {}, "ParsePrefix"),
        (["-x", "fe80::1%eth0/64"], {}, "ParsePrefix"),
        (["-b", "80,http"], {}, "invalid port"),
        (["-o", "70000"], {}, "invalid port"),
        (["-p", "15001:15002"], {}, "invalid port"),
        (["-q", "1000:2000", "--native-nftables"], {}, "invalid port"),
        (["-t", "-1"], {}, "32-bit"),
        (["-c", "bad name!"], {}, "invalid value"),
        (["-k", "an-interface-name-too-long"], {}, "invalid value"),
        (["--force-iptables-binary", "iptables"], {}, "FORCE_IPTABLES_BINARY"),
        ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/32"}, "loopback"),
        ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/7"}, "mask"),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(g) for g in range(65))}, "cannot exceed 64"),
    ],
)
def test_refused_settings(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        make(argv, env)


def test_accepted_edge_values() -> None:
    make(["-b", "*", "-d", "1000:2000,", "-o", "22", "-i", "10.1.2.3/8,2001:DB8::/32"])
    make(env={"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(g) for g in range(64))})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3/8", (4, "10.1.2.3/8", False)),
        ("2001:DB8::/32", (6, "2001:db8::/32", False)),
        ("127.1.2.3/32", (4, "127.1.2.3/32", True)),
        ("::1/128", (6, "::1/128", True)),
        ("::127.0.0.53/128", (6, "::7f00:35/128", False)),
    ],
)
def test_prefixes_print_as_go_netip(text: str, expected: tuple[int, str, bool]) -> None:
    assert config.parse_prefix(text) == expected


def test_separate_v4_v6_and_intercept_filter() -> None:
    v4, v6 = config.separate_v4_v6("10.0.0.0/8,,::1/128,127.0.0.1/32")
    assert v4.cidrs == ("10.0.0.0/8", "127.0.0.1/32") and v4.has_loopback
    assert v6.cidrs == ("::1/128",) and v6.has_loopback
    assert config.separate_v4_v6("*")[1].is_wildcard
    assert config.parse_intercept_filter("*", "1,2") == config.InterceptFilter(("1", "2"), True)
    assert config.parse_intercept_filter("3", "1,2") == config.InterceptFilter(("3",), False)
    assert config.split("a,,b,") == ["a", "b"] and config.split("") == []
