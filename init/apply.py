"""Applying the rules: iptables (legacy or nft backend, detected as istio does) or native nftables.

Owns: the subprocess calls to iptables / iptables-save / iptables-restore / nft, istio's backend
choice (dependencies/implementation.go DetectIptablesVersion: legacy when legacy rules already
exist, else iptables-nft when usable, else plain iptables; FORCE_IPTABLES_BINARY overrides), and the
guarantees istio leaves to luck:
  - idempotent: the restore script comes from iptables_state (our chains flushed and refilled, our
    jumps deleted before being added), so two runs leave identical iptables-save output;
  - atomic per run: before writing, each family's tables are saved; if any table of IPv4 or IPv6
    fails (legacy iptables-restore commits table by table), every table already written is put back
    from that snapshot (tables that did not exist are cleaned instead), and ApplyError says why;
  - cleanup removes istio's chains and the jumps into them, and our non-jump rules, nothing else.
Native nftables: one `nft -f -` transaction (nft.py's delete-and-recreate script), atomic by itself.
Must not know which rules to write (rules.py, nft.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from init import iptables_state, nft
from init.rules import Rule, RuleSet

_TIMEOUT = 30.0  # seconds for any one command; legacy iptables waits up to this for the xtables lock


class ApplyError(Exception):
    """A command failed; the message carries its stderr."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One iptables binary family (istio IptablesVersion)."""

    iptables: str
    save: str
    restore: str
    legacy: bool

    def lock(self) -> list[str]:
        # Only legacy takes the xtables lock (istio NoLocks); nf_tables serialises in the kernel.
        return [f"--wait={int(_TIMEOUT)}"] if self.legacy else []


def run(
    argv: Sequence[str], stdin: str | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ApplyError(f"{argv[0]}: {err}") from None
    if check and done.returncode != 0:
        raise ApplyError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _usable(binary: str) -> Backend | None:
    """istio shouldUseBinaryForCurrentContext, without its probe rule (we write nothing to detect)."""
    save = f"{binary}-save"
    if shutil.which(binary) is None or shutil.which(save) is None:
        return None
    try:
        run([save])
    except ApplyError:
        return None
    version = run([save, "--version"], check=False).stdout
    return Backend(binary, save, f"{binary}-restore", legacy="nf_tables" not in version)


def detect_backend(ipv6: bool, force: str = "") -> Backend:
    base = "ip6tables" if ipv6 else "iptables"
    if force:
        found = _usable(f"{base}-{force}")
        if found is None:
            raise ApplyError(f"iptables binary {base}-{force} not usable")
        return found
    legacy = _usable(f"{base}-legacy")
    if legacy is not None and run([legacy.save]).stdout.count("\n") >= 3:
        return legacy  # rules already exist in legacy: keep using it
    for candidate in (f"{base}-nft", base):
        found = _usable(candidate)
        if found is not None:
            return found
    raise ApplyError(f"no usable {base} binary found")


def _save(backend: Backend) -> str:
    return run([backend.save]).stdout


def _present(backend: Backend, rules: Sequence[Rule], state: dict[str, iptables_state.TableState]) -> list[Rule]:
    """Which of our non-jump built-in rules exist now (`iptables -C`).  Only tables that exist are
    asked: -C would load a missing legacy table, a change cleanup could not undo."""
    found: list[Rule] = []
    asked: set[tuple[str, str, tuple[str, ...]]] = set()
    for r in iptables_state.nonjump_builtin_rules(rules):
        key = (r.table, r.chain, r.spec)
        if key in asked or r.table not in state or r.chain not in state[r.table].chains:
            continue
        asked.add(key)
        argv = [backend.iptables, *backend.lock(), "-t", r.table, "-C", r.chain, *r.spec]
        if run(argv, check=False).returncode == 0:
            found.append(r)
    return found


def _restore(backend: Backend, script: str, *, noflush: bool = True) -> None:
    if script:
        run([backend.restore, *backend.lock(), *(["--noflush"] if noflush else [])], script)


@dataclass(slots=True)
class _Family:
    backend: Backend
    rules: tuple[Rule, ...]
    before: dict[str, iptables_state.TableState]
    known: tuple[Rule, ...]
    script: str = ""


def apply_iptables(
    ruleset: RuleSet,
    v4: Backend,
    v6: Backend | None,
    after: Callable[[], None] | None = None,
    known: RuleSet | None = None,
) -> list[str]:
    """Install `ruleset` (IPv6 part only when v6 is given), then run `after` (the routes). Returns
    the restore scripts run.  `known` (default: ruleset) are rules that may be ours from an earlier
    run (rules.possibly_installed): found in built-in chains, they are removed first.  If anything
    fails, both families are put back as they were and ApplyError is raised."""
    known = known or ruleset
    families = [_Family(v4, ruleset.v4, iptables_state.parse_save(_save(v4)), known.v4)]
    if v6 is not None:
        families.append(_Family(v6, ruleset.v6, iptables_state.parse_save(_save(v6)), known.v6))
    done: list[_Family] = []
    try:
        for fam in families:
            present = _present(fam.backend, (*fam.rules, *fam.known), fam.before)
            fam.script = iptables_state.restore_script(fam.before, fam.rules, present)
            done.append(fam)  # before running: a failed restore may have committed earlier tables
            _restore(fam.backend, fam.script)
        if after is not None:
            after()
    except ApplyError as err:
        problems = _roll_back(done)
        raise ApplyError(f"{err}{'; rollback: ' + '; '.join(problems) if problems else ''}") from None
    return [fam.script for fam in families]


def _roll_back(families: Sequence[_Family]) -> list[str]:
    """Put every table a script touched back as saved; clean tables that did not exist."""
    problems: list[str] = []
    for fam in reversed(families):
        touched = {line[1:] for line in fam.script.splitlines() if line.startswith("*")}
        snapshot = "".join(fam.before[t].text for t in sorted(touched) if t in fam.before)
        try:
            _restore(fam.backend, snapshot, noflush=False)  # replaces exactly those tables
            fresh = {
                t: ts
                for t, ts in iptables_state.parse_save(_save(fam.backend)).items()
                if t in touched and t not in fam.before
            }
            _restore(fam.backend, iptables_state.restore_script(fresh, (), ()))
        except ApplyError as err:
            problems.append(str(err))
    return problems


def cleanup_iptables(ruleset: RuleSet, v4: Backend, v6: Backend | None) -> list[str]:
    """Remove istio chains, jumps into them and those of `ruleset`'s non-jump built-in chain rules
    that are present (pass rules.possibly_installed), in both families. Idempotent."""
    scripts = []
    for backend, rules in ((v4, ruleset.v4), (v6, ruleset.v6)):
        if backend is None:
            continue
        state = iptables_state.parse_save(_save(backend))
        script = iptables_state.restore_script(state, (), _present(backend, rules, state))
        _restore(backend, script)
        scripts.append(script)
    return scripts


def apply_nft(script: str, after: Callable[[], None] | None = None) -> None:
    """Run an nft script as one transaction (all or nothing), then `after`; if `after` fails, put
    istio's tables back as they were before."""
    if shutil.which("nft") is None:
        raise ApplyError("native nftables is enabled, but the nft binary is missing")
    before = nft_snapshot()
    run(["nft", "-f", "-"], script)
    if after is None:
        return
    try:
        after()
    except ApplyError:
        run(["nft", "-f", "-"], before, check=False)
        raise


def nft_snapshot() -> str:
    """An nft script that recreates istio's tables exactly as they are now (or removes them)."""
    parts = []
    for table in nft.TABLES:
        parts.append(f"add table inet {table}\ndelete table inet {table}\n")
        listing = run(["nft", "list", "table", "inet", table], check=False)
        if listing.returncode == 0:
            parts.append(listing.stdout)
    return "".join(parts)
