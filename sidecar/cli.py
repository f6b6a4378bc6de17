"""Envoy's command line (source/server/options_impl.cc), parsed into a frozen `Options`.

pilot-agent and other launchers start us exactly as they start Envoy, so every flag Envoy 1.40 knows
is accepted; those that mean nothing here (hot restart, mutex tracing, core dumps ...) are kept in
`Options` and otherwise ignored.  Errors copy Envoy's wording and its exit code 1: TCLAP's
`PARSE ERROR: Argument: ...` block plus brief usage for unknown flags and unreadable values, and
a bare `error: ...` line for values options_impl.cc refuses after parsing.

Differences from TCLAP, on purpose: `--flag=value` and `-lvalue` are accepted too (TCLAP refuses
them), and a flag given twice keeps its last value (TCLAP refuses it).  Component names in
--component-log-level are not checked against a list (Envoy's list changes between versions).

This module owns parsing only: it does no logging setup, reads no files and starts nothing."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, TextIO

from sidecar import __version__

# spdlog's level names as Envoy accepts them; "warn" is an alias of "warning".
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
DEFAULT_LOG_FORMAT = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
MODES = ("serve", "validate", "init_only")
_TAG_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Options:
    config_path: str = ""
    config_yaml: str = ""
    mode: str = "serve"
    concurrency: int = 1
    log_level: str = "info"
    component_log_level: tuple[tuple[str, str], ...] = ()
    log_format: str = DEFAULT_LOG_FORMAT
    log_format_escaped: bool = False
    log_path: str = ""
    drain_time_s: int = 600
    drain_strategy: str = "gradual"
    parent_shutdown_time_s: int = 900
    service_cluster: str = ""
    service_node: str = ""
    service_zone: str = ""
    local_address_ip_version: str = "v4"
    file_flush_interval_msec: int = 10000
    allow_unknown_static_fields: bool = False
    reject_unknown_dynamic_fields: bool = False
    ignore_unknown_dynamic_fields: bool = False
    admin_address_path: str = ""
    stats_tags: tuple[tuple[str, str], ...] = ()
    disable_extensions: tuple[str, ...] = ()
    # Moot here (hot restart, profiling, core dumps): kept so /server_info can show them.
    base_id: int = 0
    use_dynamic_base_id: bool = False
    base_id_path: str = ""
    restart_epoch: int = 0
    disable_hot_restart: bool = False
    enable_mutex_tracing: bool = False
    cpuset_threads: bool = False
    socket_path: str = "@envoy_domain_socket"
    socket_mode: int = 0
    enable_core_dump: bool = False
    enable_fine_grain_logging: bool = False
    file_flush_min_size_kb: int = 64


class _Malformed(Exception):
    """A value options_impl.cc refuses after parsing (Envoy's MalformedArgvException)."""


class _ParseError(Exception):
    """What TCLAP reports as PARSE ERROR; `argument` is the offending token or flag."""

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(detail)
        self.argument = argument
        self.detail = detail


def _uint32(text: str) -> int:
    if not re.fullmatch(r"\+?[0-9]+", text.strip()) or int(text) >= 2**32:
        raise ValueError(text)
    return int(text)


_uint32.__name__ = "uint32_t"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's own messages ("argument --concurrency: invalid uint32_t value: 'abc'") name the
        # flag; re-shape them as TCLAP does: the flag in parentheses, then what went wrong.
        m = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if m:
            flag = m.group(1).split("/")[-1]
            detail = m.group(2)
            v = re.match(r"invalid \S+ value: (.*)", detail)
            if v:
                detail = f"Couldn't read argument value from string {v.group(1)}"
            elif detail.startswith("expected one argument"):
                detail = "Missing a value for this argument!"
            raise _ParseError(f"({flag})", detail)
        raise _ParseError("", message)


def _build_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, allow_abbrev=False, add_help=True, description="sidecar, run as Envoy")
    s = p.add_argument

    def switch(name: str, help: str | None = None) -> None:
        p.add_argument(name, action="store_true", help=help)

    s("-c", "--config-path", default="", help="Path to configuration file")
    s(
        "--config-yaml",
        default="",
        help="Inline YAML configuration, merges with the contents of --config-path",
    )
    s("--mode", default="serve", help="One of 'serve' (default), 'validate' or 'init_only'")
    s("--concurrency", type=_uint32, default=None, help="# of worker processes to run")
    s("-l", "--log-level", default=None, help="Log levels: " + "".join(f"[{x}]" for x in LOG_LEVELS))
    s("--component-log-level", default="", help="Comma-separated list, e.g. upstream:debug,config:trace")
    s("--log-format", default=DEFAULT_LOG_FORMAT, help="Log message format in spdlog syntax")
    switch("--log-format-escaped")
    switch("--enable-fine-grain-logging")
    s("--log-path", default="", help="Path to logfile")
    switch("--log-stacktrace-single-entry")
    switch("--skip-deprecated-logs")
    s("--drain-time-s", type=_uint32, default=600, help="Hot restart and LDS removal drain time in seconds")
    s("--drain-strategy", default="gradual", help="'gradual' (default) or 'immediate'")
    s("--parent-shutdown-time-s", type=_uint32, default=900)
    s("--service-cluster", default="", help="Cluster name")
    s("--service-node", default="", help="Node name")
    s("--service-zone", default="", help="Zone name")
    s("--base-id", type=_uint32, default=0)
    switch("--use-dynamic-base-id")
    s("--base-id-path", default="")
    switch("--skip-hot-restart-parent-stats")
    switch("--skip-hot-restart-on-no-parent")
    switch("--disable-hot-restart")
    s("--restart-epoch", type=_uint32, default=0)
    switch("--hot-restart-version")
    s("--local-address-ip-version", default="v4", help="The local IP address version (v4 or v6).")
    s("--file-flush-interval-msec", type=_uint32, default=10000)
    s("--file-flush-min-size-kb", type=_uint32, default=64)
    switch("--allow-unknown-static-fields")
    switch("--allow-unknown-fields", help="Deprecated alias of --allow-unknown-static-fields")
    switch("--reject-unknown-dynamic-fields")
    switch("--ignore-unknown-dynamic-fields")
    s("--admin-address-path", default="")
    switch("--enable-mutex-tracing")
    switch("--cpuset-threads")
    s("--disable-extensions", default="")
    s("--socket-path", default="@envoy_domain_socket")
    s("--socket-mode", default="600")
    switch("--enable-core-dump")
    s("--stats-tag", action="append", default=[], help="tag:value, may be repeated")
    switch("--version", help="Displays version information and exits.")
    return p


def version_line(prog: str) -> str:
    # Envoy prints "\n<argv0>  version: <sha>/<version>/<Clean>/<RELEASE>/<BoringSSL>\n\n": keep the
    # shape so tools that split on "/" still find a version in the second field.
    return f"\n{prog}  version: sidecar/{__version__}/Clean/RELEASE/OpenSSL\n\n"


def _brief_usage(prog: str) -> str:
    return (
        f"\nBrief USAGE: \n   {prog}  [-c <string>] [--config-yaml <string>] [--mode <string>] ...\n\n"
        f"For complete USAGE and HELP type: \n   {prog} --help\n\n"
    )


def _log_level(text: str) -> str:
    if text == "warn":
        return "warning"
    if text not in LOG_LEVELS:
        raise _Malformed(f"error: invalid log level specified '{text}'")
    return text


def _component_levels(text: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            raise _Malformed(f"error: component log level not correctly specified '{item}'")
        if not parts[0]:
            raise _Malformed(f"error: invalid component specified '{parts[0]}'")
        out.append((parts[0], _log_level(parts[1])))
    return tuple(out)


def _stats_tags(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep:
            raise _Malformed(f"error: misformatted stats-tag '{item}'")
        if not _TAG_NAME.fullmatch(name):
            raise _Malformed(f"error: misformatted stats-tag '{item}' contains invalid char in '{name}'")
        if "." in value:
            raise _Malformed(f"error: misformatted stats-tag '{item}' contains invalid char in '{value}'")
        out.append((name, value))
    return tuple(out)


def _default_concurrency(cpuset_threads: bool) -> int:
    if cpuset_threads and hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _options(ns: argparse.Namespace) -> Options:
    for name, value, allowed in (
        ("mode", ns.mode, MODES),
        ("IP address version", ns.local_address_ip_version, ("v4", "v6")),
        ("drain-strategy", ns.drain_strategy, ("gradual", "immediate")),
    ):
        if value not in allowed:
            raise _Malformed(f"error: unknown {name} '{value}'")
    if ns.use_dynamic_base_id and ns.restart_epoch > 0:
        raise _Malformed(f"error: cannot use --restart-epoch={ns.restart_epoch} with --use-dynamic-base-id")
    socket_mode = 0
    if not ns.socket_path.startswith("@"):  # abstract sockets have no mode (options_impl.cc)
        try:
            socket_mode = int(ns.socket_mode, 8)
        except ValueError:
            raise _Malformed(f"error: invalid socket-mode '{ns.socket_mode}'") from None
    # Envoy: max(1, --concurrency); without it, the CPU count (of the cpuset with --cpuset-threads).
    concurrency = _default_concurrency(ns.cpuset_threads) if ns.concurrency is None else ns.concurrency
    return Options(
        config_path=ns.config_path,
        config_yaml=ns.config_yaml,
        mode=ns.mode,
        concurrency=max(1, concurrency),
        log_level="info" if ns.log_level is None else _log_level(ns.log_level),
        component_log_level=_component_levels(ns.component_log_level),
        log_format=ns.log_format,
        log_format_escaped=ns.log_format_escaped,
        log_path=ns.log_path,
        drain_time_s=ns.drain_time_s,
        drain_strategy=ns.drain_strategy,
        parent_shutdown_time_s=ns.parent_shutdown_time_s,
        service_cluster=ns.service_cluster,
        service_node=ns.service_node,
        service_zone=ns.service_zone,
        local_address_ip_version=ns.local_address_ip_version,
        file_flush_interval_msec=ns.file_flush_interval_msec,
        allow_unknown_static_fields=ns.allow_unknown_static_fields or ns.allow_unknown_fields,
        reject_unknown_dynamic_fields=ns.reject_unknown_dynamic_fields,
        ignore_unknown_dynamic_fields=ns.ignore_unknown_dynamic_fields,
        admin_address_path=ns.admin_address_path,
        stats_tags=_stats_tags(ns.stats_tag),
        disable_extensions=tuple(ns.disable_extensions.split(",")) if ns.disable_extensions else (),
        base_id=ns.base_id,
        use_dynamic_base_id=ns.use_dynamic_base_id,
        base_id_path=ns.base_id_path,
        restart_epoch=ns.restart_epoch,
        disable_hot_restart=ns.disable_hot_restart,
        enable_mutex_tracing=ns.enable_mutex_tracing,
        cpuset_threads=ns.cpuset_threads,
        socket_path=ns.socket_path,
        socket_mode=socket_mode,
        enable_core_dump=ns.enable_core_dump,
        enable_fine_grain_logging=ns.enable_fine_grain_logging,
        file_flush_min_size_kb=ns.file_flush_min_size_kb,
    )


def parse_args(
    argv: Sequence[str], prog: str = "sidecar", stdout: TextIO | None = None, stderr: TextIO | None = None
) -> Options:
    """Parse Envoy's flags; `argv` excludes the program name (sys.argv[1:]).

    Exits as Envoy does: 0 after --version, --help or --hot-restart-version; 1 with a message on
    stderr for an unknown flag or a bad value."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _build_parser(prog)
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("--", "--ignore_rest"):  # TCLAP: ignore the rest of the arguments
            args = args[:i]
            break
    try:
        ns, extras = parser.parse_known_args(args)
        if extras:
            raise _ParseError(extras[0], "Couldn't find match for argument")
        if ns.version:
            out.write(version_line(prog))
            raise SystemExit(0)
        if ns.hot_restart_version:
            err.write("disabled")  # HotRestartNopImpl's version string, printed to stderr by Envoy
            raise SystemExit(0)
        return _options(ns)
    except _ParseError as e:
        name = e.argument or "(unknown)"
        err.write(f"PARSE ERROR: Argument: {name}\n             {e.detail}\n{_brief_usage(prog)}")
        raise SystemExit(1) from None
    except _Malformed as e:
        err.write(f"{e}\n")
        raise SystemExit(1) from None
