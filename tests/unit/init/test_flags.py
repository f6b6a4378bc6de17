"""istio-iptables' command line: names, shorthands, defaults, env variables and precedence."""

from __future__ import annotations

import pytest

from init import flags


def test_defaults_are_istios() -> None:
    v = flags.parse([], {})
    assert v["envoy-port"] == "15001"
    assert v["inbound-capture-port"] == "15006"
    assert v["inbound-tunnel-port"] == "15008"
    assert v["istio-inbound-tproxy-mark"] == "1337"
    assert v["istio-inbound-tproxy-route-table"] == "133"
    assert v["iptables-probe-port"] == 15002
    assert v["probe-timeout"] == 5.0
    assert v["proxy-uid"] == "" and v["istio-inbound-ports"] == "" and v["dry-run"] is False


@pytest.mark.parametrize(
    ("short", "long"),
    [
        ("p", "envoy-port"),
        ("z", "inbound-capture-port"),
        ("e", "inbound-tunnel-port"),
        ("u", "proxy-uid"),
        ("g", "proxy-gid"),
        ("m", "istio-inbound-interception-mode"),
        ("b", "istio-inbound-ports"),
        ("d", "istio-local-exclude-ports"),
        ("c", "istio-exclude-interfaces"),
        ("i", "istio-service-cidr"),
        ("x", "istio-service-exclude-cidr"),
        ("q", "istio-outbound-ports"),
        ("o", "istio-local-outbound-ports-exclude"),
        ("k", "kube-virt-interfaces"),
        ("t", "istio-inbound-tproxy-mark"),
        ("r", "istio-inbound-tproxy-route-table"),
    ],
)
def test_shorthands_match_root_go(short: str, long: str) -> None:
    assert flags.BY_SHORT[short].name == long
    assert flags.parse([f"-{short}", "v1"], {})[long] == "v1"
    assert flags.parse([f"-{short}v2"], {})[long] == "v2"
    assert flags.parse([f"-{short}=v3"], {})[long] == "v3"
    assert flags.parse([f"--{long}", "v4"], {})[long] == "v4"
    assert flags.parse([f"--{long}=v5"], {})[long] == "v5"


@pytest.mark.parametrize(
    ("env", "raw", "name", "value"),
    [
        ("ISTIO_INBOUND_PORTS", "*", "istio-inbound-ports", "*"),
        ("ISTIO_SERVICE_CIDR", "10.0.0.0/8", "istio-service-cidr", "10.0.0.0/8"),
        ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "15020", "istio-local-outbound-ports-exclude", "15020"),
        ("INBOUND_CAPTURE_PORT", "16006", "inbound-capture-port", "16006"),
        ("ISTIO_INBOUND_INTERCEPTION_MODE", "TPROXY", "istio-inbound-interception-mode", "TPROXY"),
        ("KUBE_VIRT_INTERFACES", "veth0", "kube-virt-interfaces", "veth0"),
        ("PROXY_UID", "101", "proxy-uid", "101"),
        ("NATIVE_NFTABLES", "true", "native-nftables", True),
        ("ISTIO_META_DNS_CAPTURE", "True", "redirect-dns", True),
        ("INVALID_DROP", "1", "drop-invalid", True),
        ("ISTIO_DUAL_STACK", "t", "dual-stack", True),
        ("PROBE_TIMEOUT", "1m30s", "probe-timeout", 90.0),
        ("IPTABLES_PROBE_PORT", "16002", "iptables-probe-port", 16002),
    ],
)
def test_environment_variables(env: str, raw: str, name: str, value: object) -> None:
    assert flags.parse([], {env: raw})[name] == value


def test_flag_beats_env_and_additional_env_beats_bound_env() -> None:
    assert flags.parse(["-b", "80"], {"ISTIO_INBOUND_PORTS": "*"})["istio-inbound-ports"] == "80"
    # root.go: BindEnv(REDIRECT_DNS) then AdditionalEnv(ISTIO_META_DNS_CAPTURE): the latter wins.
    env = {"REDIRECT_DNS": "true", "ISTIO_META_DNS_CAPTURE": "false"}
    assert flags.parse([], env)["redirect-dns"] is False
    assert flags.parse(["--redirect-dns"], env)["redirect-dns"] is True


def test_envoy_port_has_no_environment_variable_and_bad_env_values_are_ignored() -> None:
    assert flags.parse([], {"ENVOY_PORT": "1"})["envoy-port"] == "15001"
    assert flags.parse([], {"DRY_RUN": "maybe"})["dry-run"] is False
    assert flags.parse([], {"IPTABLES_PROBE_PORT": "70000"})["iptables-probe-port"] == 15002


def test_booleans_as_pflag() -> None:
    assert flags.parse(["--dry-run"], {})["dry-run"] is True
    assert flags.parse(["--dry-run=false"], {"DRY_RUN": "1"})["dry-run"] is False
    assert flags.parse(["-n"], {})["dry-run"] is True
    v = flags.parse(["-nb", "*"], {})  # a cluster: bool, then a flag taking the next argument
    assert v["dry-run"] is True and v["istio-inbound-ports"] == "*"
    with pytest.raises(flags.UsageError):
        flags.parse(["--dry-run", "false"], {})  # pflag does not consume a separate bool value


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-such-flag"],
        ["-Z"],
        ["-p"],
        ["--envoy-port"],
        ["stray"],
        ["--probe-timeout=5"],
        ["--iptables-probe-port=65536"],
        ["--dry-run=yes"],
    ],
)
def test_rejected_command_lines(argv: list[str]) -> None:
    with pytest.raises(flags.UsageError):
        flags.parse(argv, {})


def test_log_flags_and_extensions_are_accepted() -> None:
    v = flags.parse(
        [
            "--log_output_level=default:debug",
            "--log_as_json",
            "--log_target",
            "stderr",
            "--log_target",
            "/tmp/x",
            "--cleanup",
            "--dns-servers",
            "1.1.1.1",
        ],
        {},
    )
    assert v["log_output_level"] == "default:debug" and v["log_as_json"] is True
    assert v["log_target"] == ("stderr", "/tmp/x")
    assert v["cleanup"] is True and v["dns-servers"] == "1.1.1.1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0), ("0", 0.0), ("2us", 2e-6)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert flags.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "1m 2s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        flags.parse_duration(text)


def test_usage_lists_every_flag() -> None:
    text = flags.usage()
    assert all(f"--{f.name}" in text for f in flags.FLAGS)
