"""What is installed (iptables-save text) and the restore scripts that install or remove ours (pure).

Owns: reading `iptables-save` output, and turning (what is there, what we want) into one
`iptables-restore --noflush` script per family that is idempotent and touches only what is ours:
  - our chains are declared `:CHAIN - [0:0]`, which creates a missing chain and flushes an existing one;
  - every rule in a built-in chain that jumps to one of istio's chains is deleted (`-D`, with the text
    iptables-save printed, so duplicates go too) and ours are added again, so a re-run never doubles a jump;
  - our rules in built-in chains that jump nowhere (RETURN for excluded interfaces, TPROXY marks) are
    deleted when apply.py found them present (`iptables -C`), then added again;
  - istio chains that the new rules no longer use are flushed and deleted.
Cleanup is the same script with no rules to add.  Each table's part commits atomically.
Must not know how scripts are run (apply.py) or how rules are chosen (rules.py).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from init.rules import BUILTIN, ISTIO_CHAINS, Rule, chains_by_table

_COUNTERS = re.compile(r"\s*\[\d+:\d+\]")


@dataclass(slots=True)
class TableState:
    chains: list[str] = field(default_factory=list)  # in iptables-save order, built-in ones included
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, the rule text after "-A CHAIN ")
    text: str = ""  # this table's block, "*table" to "COMMIT", for a snapshot restore


def parse_save(text: str) -> dict[str, TableState]:
    """iptables-save output -> tables. Comments and counters are ignored."""
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    block: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), TableState())
            block = [line]
            continue
        if current is None:
            continue
        block.append(line)
        if line == "COMMIT":
            current.text = "\n".join(block) + "\n"
            current = None
        elif line.startswith(":"):
            current.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            _, chain, rest = [*line.split(None, 2), ""][:3]
            current.rules.append((chain, rest))
    return tables


def normalize_save(text: str) -> str:
    """iptables-save text without comments and packet counters: equal texts mean equal rulesets."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(_COUNTERS.sub("", line))
    return "\n".join(lines)


def _jump_target(rest: str) -> str | None:
    words = rest.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump"):
            return words[i + 1].strip("'\"")
    return None


def istio_residue(state: dict[str, TableState]) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """Per table: istio chains present, and rules of other chains jumping into them (HasIstioLeftovers)."""
    out: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}
    for table, ts in state.items():
        chains = [c for c in ts.chains if c in ISTIO_CHAINS]
        jumps = [(c, r) for c, r in ts.rules if c not in ISTIO_CHAINS and _jump_target(r) in ISTIO_CHAINS]
        if chains or jumps:
            out[table] = (chains, jumps)
    return out


def nonjump_builtin_rules(rules: Iterable[Rule]) -> list[Rule]:
    """Our rules in built-in chains that do not jump into an istio chain: found with `iptables -C`."""
    return [r for r in rules if r.chain in BUILTIN and r.jump not in ISTIO_CHAINS]


def restore_script(state: dict[str, TableState], rules: Sequence[Rule], present: Collection[Rule]) -> str:
    """The `iptables-restore --noflush` input that leaves exactly `rules` as our part of this family.

    `present`: those of our non-jump built-in rules that exist now (from `iptables -C`).  With no
    rules this is the cleanup script.  Empty when there is nothing to do."""
    wanted = chains_by_table(rules)
    residue = istio_residue(state)
    out: list[str] = []
    for table in sorted(set(wanted) | set(residue) | {r.table for r in rules} | {r.table for r in present}):
        mine = wanted.get(table, [])
        chains_now, jumps_now = residue.get(table, ([], []))
        stale = [c for c in chains_now if c not in mine]
        body = [f":{c} - [0:0]" for c in mine]
        body += [f"-D {chain} {rest}" for chain, rest in jumps_now]
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for r in present:
            if r.table == table and (r.chain, r.spec) not in seen:  # one -D per distinct rule
                seen.add((r.chain, r.spec))
                body.append(f"-D {r.chain} {' '.join(r.spec)}")
        body += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
        body += [" ".join(r.params) for r in rules if r.table == table]
        if body:
            out += [f"*{table}", *body, "COMMIT"]
    return "".join(line + "\n" for line in out)


def dry_run_cleanup_script(rules: Sequence[Rule]) -> str:
    """What cleanup would run if everything `rules` installs were there (istio's BuildCleanup, as
    restore text): delete the built-in chain rules, flush and delete the chains."""
    out: list[str] = []
    chains = chains_by_table(rules)
    for table in sorted(set(chains) | {r.table for r in rules}):
        body = [
            f"-D {r.chain} {' '.join(r.spec)}"
            for r in reversed(rules)
            if r.table == table and r.chain in BUILTIN
        ]
        body += [f"-F {c}" for c in chains.get(table, [])] + [f"-X {c}" for c in chains.get(table, [])]
        if body:
            out += [f"*{table}", *body, "COMMIT"]
    return "".join(line + "\n" for line in out)
