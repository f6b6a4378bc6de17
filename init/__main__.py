"""`sidecar-init`: the init container's entry point, istio-iptables' command (pkg/cmd/root.go `Run`).

Wiring only: flags and env -> InitConfig (flags.py, config.py, with the real host facts here) ->
rules (rules.py / nft.py) -> print (--dry-run) or apply (apply.py) with the netlink routes
(routes.py) -> --run-validation (validation.py).  Exit codes as istio: 0 ok, 1 any error (the reason
on stderr), 126 validation failed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import sys
from collections.abc import Callable, Sequence

from init import apply, config, flags, iptables_state, nft, routes, rules, validation

log = logging.getLogger("sidecar-init")
_CLONE_NEWNET = 0x40000000

VALIDATION_MESSAGE = (
    "iptables validation failed; workload is not ready for Istio.\n"
    "When using Istio CNI, this can occur if a pod is scheduled before the node is ready."
)


class RealHost:
    """config.HostFacts from this machine (and the network namespace we are in)."""

    def user_uid(self, name: str) -> str | None:
        try:
            return str(pwd.getpwnam(name).pw_uid)
        except KeyError:
            return None

    def interface_addresses(self) -> list[str]:
        from pyroute2 import IPRoute  # only needed when IPv6 is detected

        with IPRoute() as ipr:
            addrs = list(ipr.get_addr())
        # Go's net.InterfaceAddrs order: interface by interface; the kernel dumps IPv4 before IPv6.
        addrs.sort(key=lambda a: int(a["index"]))
        return [str(a.get_attr("IFA_ADDRESS")) for a in addrs if a.get_attr("IFA_ADDRESS")]

    def resolv_conf(self) -> str:
        with open("/etc/resolv.conf", encoding="utf-8") as f:
            return f.read()


def _enter_netns(path: str) -> None:
    """--network-namespace: move this (still single-threaded) process into that namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is now (the root logger and its handlers are left alone)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _setup_logging(level: str) -> None:
    """istio's --log_output_level ("default:debug" or "info"): the level of our own logger."""
    name = level.rpartition(":")[2].lower() or "info"
    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "error": logging.ERROR,
        "fatal": logging.CRITICAL,
        "none": logging.CRITICAL + 1,
    }
    log.setLevel(levels.get(name, logging.INFO))
    log.propagate = False
    if not log.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        values = flags.parse(args, os.environ)
    except flags.UsageError as err:
        help_asked = str(err) == "help requested"
        print(flags.usage(), file=sys.stdout if help_asked else sys.stderr)
        if not help_asked:
            print(f"Error: {err}", file=sys.stderr)
        return 0 if help_asked else 1
    _setup_logging(str(values["log_output_level"]))
    try:
        if values["network-namespace"]:
            _enter_netns(str(values["network-namespace"]))
        cfg = config.from_flags(values, os.environ, RealHost())
        log.info("config: %s", cfg)
        if not cfg.skip_rule_apply:
            _program(cfg)
    except (config.ConfigError, apply.ApplyError, routes.RouteError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if cfg.run_validation:
        try:
            validation.run(cfg)
        except (validation.ValidationError, OSError, KeyError) as err:
            print(f"{VALIDATION_MESSAGE}\n{err}", file=sys.stderr)
            return validation.EXIT_CODE
        log.info("validation passed, iptables rules established")
    return 0


def _program(cfg: config.InitConfig) -> None:
    """ProgramIptables / ProgramNftables, then the routes; dry-run prints and touches nothing."""
    if cfg.native_nftables:
        script = nft.render(cfg, replace=True)
        if cfg.dry_run:
            sys.stdout.write(script)
            return
        if cfg.cleanup_only:
            apply.apply_nft(script)
            routes.remove(cfg)
            return
        apply.apply_nft(script, after=_routes_step(cfg))
        return
    ruleset = rules.build(cfg)
    if cfg.dry_run:
        sys.stdout.write(_dry_run_text(cfg, ruleset))
        return
    v4 = apply.detect_backend(False, cfg.force_iptables_binary)
    v6 = _v6_backend(cfg)
    log.info("iptables backend: %s%s", v4.iptables, f", {v6.iptables}" if v6 else "")
    known = rules.possibly_installed(cfg)
    if cfg.cleanup_only:
        apply.cleanup_iptables(known, v4, v6)
        routes.remove(cfg)
        return
    apply.apply_iptables(ruleset, v4, v6, after=_routes_step(cfg), known=known)


def _v6_backend(cfg: config.InitConfig) -> apply.Backend | None:
    """ip6tables is required with IPv6; for cleanup it is used when it works (to find old v6 rules)."""
    if cfg.enable_ipv6:
        return apply.detect_backend(True, cfg.force_iptables_binary)
    if cfg.cleanup_only:
        try:
            return apply.detect_backend(True, cfg.force_iptables_binary)
        except apply.ApplyError:
            return None
    return None


def _routes_step(cfg: config.InitConfig) -> Callable[[], None]:
    def step() -> None:
        try:
            routes.configure(cfg)
        except (routes.RouteError, OSError) as err:  # as ApplyError, so that the rules are rolled back
            try:
                routes.remove(cfg)
            except (routes.RouteError, OSError):
                pass
            raise apply.ApplyError(f"failed to configure routes: {err}") from None

    return step


def _dry_run_text(cfg: config.InitConfig, ruleset: rules.RuleSet) -> str:
    if cfg.cleanup_only:
        v4, v6 = (
            iptables_state.dry_run_cleanup_script(ruleset.v4),
            iptables_state.dry_run_cleanup_script(ruleset.v6),
        )
    else:
        v4, v6 = rules.render_restore(ruleset.v4), rules.render_restore(ruleset.v6)
    text = "# iptables-restore --noflush\n" + v4
    if cfg.enable_ipv6:
        text += "# ip6tables-restore --noflush\n" + v6
    return text


if __name__ == "__main__":  # python -m init
    sys.exit(main())
