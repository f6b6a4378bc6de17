"""istio-iptables' command line: the flag table and a pflag-compatible parser (pure; no I/O).

Owns: every flag name, shorthand, type, default and environment variable of istio/istio
tools/istio-iptables/pkg/cmd/root.go (`bindCmdlineFlags`), and the precedence istio gets from
pkg/flag: a `BindEnv` variable (flag name upper-cased, '-' -> '_') is applied first, then each
`AdditionalEnv` variable, then the command line; an environment value that does not parse is ignored
(istio drops the `fs.Set` error).  The log flags of istio's pkg/log are accepted and kept.
Must not know: what the settings mean (config.py) or how rules look (rules.py, nft.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FlagValue = str | bool | int | float | tuple[str, ...]


class UsageError(Exception):
    """A command line istio-iptables (cobra/pflag) would reject."""


@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # the long name, exactly as istio spells it
    short: str  # one letter or ""
    kind: str  # "str" | "bool" | "uint16" | "duration" | "strarray"
    default: FlagValue
    envs: tuple[str, ...]  # BindEnv's variable first, then AdditionalEnv ones, in istio's order
    help: str


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _f(
    name: str,
    short: str,
    kind: str,
    default: FlagValue,
    help: str,
    *,
    env: bool = True,
    extra_env: tuple[str, ...] = (),
) -> Flag:
    envs = ((_env_name(name),) if env else ()) + extra_env
    return Flag(name, short, kind, default, envs, help)


FLAGS: tuple[Flag, ...] = (
    # `envoy-port` is bound with flag.Bind (no environment variable) in root.go.
    _f(
        "envoy-port",
        "p",
        "str",
        "15001",
        "Envoy port to which all outbound TCP traffic is redirected.",
        env=False,
    ),
    _f("inbound-capture-port", "z", "str", "15006", "Port to which all inbound TCP traffic is redirected."),
    _f("inbound-tunnel-port", "e", "str", "15008", "Istio tunnel (HBONE) port; never captured."),
    _f(
        "proxy-uid",
        "u",
        "str",
        "",
        "UID(s) whose traffic is not redirected (default: uid of ENVOY_USER, else 1337).",
    ),
    _f("proxy-gid", "g", "str", "", "GID(s) whose traffic is not redirected (default: the proxy uid)."),
    _f("istio-inbound-interception-mode", "m", "str", "", "REDIRECT or TPROXY."),
    _f("istio-inbound-ports", "b", "str", "", "Inbound ports to redirect ('*' = all, empty = none)."),
    _f("istio-local-exclude-ports", "d", "str", "", "Inbound ports excluded when -b is '*'."),
    _f("istio-exclude-interfaces", "c", "str", "", "Interfaces whose traffic is never captured."),
    _f("istio-service-cidr", "i", "str", "", "Outbound CIDRs to redirect ('*' = all, empty = none)."),
    _f("istio-service-exclude-cidr", "x", "str", "", "Outbound CIDRs excluded from redirection."),
    _f("istio-outbound-ports", "q", "str", "", "Outbound ports always redirected."),
    _f("istio-local-outbound-ports-exclude", "o", "str", "", "Outbound ports never redirected."),
    _f(
        "kube-virt-interfaces",
        "k",
        "str",
        "",
        "Virtual interfaces whose inbound traffic is treated as outbound.",
    ),
    _f("istio-inbound-tproxy-mark", "t", "str", "1337", "Packet mark used by TPROXY mode."),
    _f("istio-inbound-tproxy-route-table", "r", "str", "133", "Routing table used by TPROXY mode."),
    _f("dry-run", "n", "bool", False, "Print the rules; change nothing."),
    _f("iptables-probe-port", "", "uint16", 15002, "Port the validation client connects to."),
    _f("probe-timeout", "", "duration", 5.0, "Validation timeout (Go duration, e.g. 5s)."),
    _f("skip-rule-apply", "", "bool", False, "Do not apply rules."),
    _f("run-validation", "", "bool", False, "Check the installed redirection works."),
    _f(
        "redirect-dns",
        "",
        "bool",
        False,
        "Capture DNS to the agent (15053).",
        extra_env=("ISTIO_META_DNS_CAPTURE",),
    ),
    _f("drop-invalid", "", "bool", False, "Drop conntrack-INVALID packets.", extra_env=("INVALID_DROP",)),
    _f(
        "dual-stack",
        "",
        "bool",
        False,
        "Enable IPv4/IPv6 redirects for dual-stack.",
        extra_env=("ISTIO_DUAL_STACK",),
    ),
    _f("capture-all-dns", "", "bool", False, "Capture all port-53 traffic, not only to resolv.conf servers."),
    _f("network-namespace", "", "str", "", "Network namespace (path) to apply the rules in."),
    _f("cni-mode", "", "bool", False, "Run as the CNI plugin would (accepted; no effect here)."),
    _f("reconcile", "", "bool", False, "Reconcile pre-existing rules (we always do)."),
    _f("cleanup-only", "", "bool", False, "Remove what this program installs, install nothing."),
    _f("force-apply", "", "bool", False, "Apply even if rules seem in place (we always apply)."),
    _f("native-nftables", "", "bool", False, "Use native nftables (nft -f) instead of iptables."),
    _f("force-iptables-binary", "", "str", "", "Force 'legacy' or 'nft' iptables."),
    # Extensions (not in istio-iptables): an alias, explicit DNS servers (instead of /etc/resolv.conf)
    # and an explicit IPv6 switch (instead of detection from the pod's addresses).
    _f("cleanup", "", "bool", False, "Alias of --cleanup-only.", env=False),
    _f("dns-servers", "", "str", "", "Comma separated DNS servers (default: /etc/resolv.conf).", env=False),
    _f("enable-inbound-ipv6", "", "str", "", "true/false: skip IPv6 detection.", extra_env=()),
    # istio pkg/log Options.AttachFlags: accepted so istio's command lines run unchanged.
    _f("log_target", "", "strarray", ("stdout",), "Log output paths.", env=False),
    _f("log_as_json", "", "bool", False, "Log as JSON.", env=False),
    _f("log_output_level", "", "str", "default:info", "Minimum log level.", env=False),
    _f("log_stacktrace_level", "", "str", "default:none", "Stack trace level.", env=False),
    _f("log_caller", "", "str", "", "Scopes with caller information.", env=False),
)

BY_NAME: Mapping[str, Flag] = {f.name: f for f in FLAGS}
BY_SHORT: Mapping[str, Flag] = {f.short: f for f in FLAGS if f.short}

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds ("5s", "1m30s", "250ms"; a bare "0" is allowed)."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return -total if text.startswith("-") else total


def _convert(flag: Flag, raw: str, current: FlagValue) -> FlagValue:
    if flag.kind == "bool":
        return parse_bool(raw)
    if flag.kind == "uint16":
        value = int(raw, 0)
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{raw!r} out of range for uint16")
        return value
    if flag.kind == "duration":
        return parse_duration(raw)
    if flag.kind == "strarray":
        # pflag's StringArray: the first use replaces the default, later ones append.
        return (*current, raw) if isinstance(current, tuple) and current != flag.default else (raw,)
    return raw


def parse(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, FlagValue]:
    """Flag values by long name: defaults, then environment, then the command line (root.go order)."""
    values: dict[str, FlagValue] = {f.name: f.default for f in FLAGS}
    for env_flag in FLAGS:
        for var in env_flag.envs:
            if var in env:
                try:
                    values[env_flag.name] = _convert(env_flag, env[var], values[env_flag.name])
                except ValueError:
                    pass  # istio ignores an environment value that does not parse
    args = list(argv)
    i = 0
    while i < len(args):  # bounded: every branch advances i
        arg = args[i]
        i += 1
        if arg == "--":
            if i < len(args):
                raise UsageError(f"unexpected arguments: {args[i:]}")
            break
        if arg in ("-h", "--help"):
            raise UsageError("help requested")
        if arg.startswith("--"):
            name, eq, inline = arg[2:].partition("=")
            flag = BY_NAME.get(name)
            if flag is None:
                raise UsageError(f"unknown flag: --{name}")
            if eq:
                raw = inline
            elif flag.kind == "bool":
                raw = "true"  # pflag: a bare boolean flag means true; "--x false" does not consume "false"
            elif i < len(args):
                raw = args[i]
                i += 1
            else:
                raise UsageError(f"flag needs an argument: --{name}")
            _set(values, flag, raw, f"--{name}")
        elif arg.startswith("-") and len(arg) > 1:
            i = _parse_shorts(values, arg[1:], args, i)
        else:
            raise UsageError(f"unexpected argument {arg!r}")
    return values


def _parse_shorts(values: dict[str, FlagValue], cluster: str, args: list[str], i: int) -> int:
    """pflag shorthand: '-n', '-p 15001', '-p15001', '-p=15001', '-nb 80'."""
    pos = 0
    while pos < len(cluster):  # bounded by the cluster length
        letter = cluster[pos]
        flag = BY_SHORT.get(letter)
        if flag is None:
            raise UsageError(f"unknown shorthand flag: {letter!r} in -{cluster}")
        rest = cluster[pos + 1 :]
        if rest.startswith("="):
            _set(values, flag, rest[1:], f"-{letter}")
            return i
        if flag.kind == "bool":
            _set(values, flag, "true", f"-{letter}")
            pos += 1
            continue
        if rest:
            _set(values, flag, rest, f"-{letter}")
            return i
        if i >= len(args):
            raise UsageError(f"flag needs an argument: -{letter}")
        _set(values, flag, args[i], f"-{letter}")
        return i + 1
    return i


def _set(values: dict[str, FlagValue], flag: Flag, raw: str, spelled: str) -> None:
    try:
        values[flag.name] = _convert(flag, raw, values[flag.name])
    except ValueError as err:
        raise UsageError(f"invalid argument {raw!r} for {spelled}: {err}") from None


def usage() -> str:
    lines = ["Usage: sidecar-init [flags]", "", "Flags:"]
    for f in FLAGS:
        short = f"-{f.short}, " if f.short else "    "
        env = f" [env {', '.join(f.envs)}]" if f.envs else ""
        lines.append(f"  {short}--{f.name} ({f.kind}, default {f.default!r}){env}\n        {f.help}")
    return "\n".join(lines)
