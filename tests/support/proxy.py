"""Run envoy or the sidecar on a bootstrap for black-box tests.

`render(template, **values)` fills `{name}` placeholders in a bootstrap template (YAML or JSON) and
gives a free port to every `{..._port}` placeholder it was not given, so YAML's own braces (`{}`,
`{a: b}`) stay untouched.  `ProxyProcess` starts `<venv>/bin/envoy` or `<venv>/bin/sidecar` exactly the
way Istio's pilot-agent would (`-c file --concurrency 1 -l warning --disable-hot-restart`), waits until
admin `/ready` answers 200 and every listener port accepts, and keeps stderr in a file so a failing test
can show it.  Both binaries are found next to `sys.executable`."""

from __future__ import annotations

import atexit
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port

PROXY_KINDS = ("envoy", "sidecar")
# Every process started and not yet stopped: stopped at interpreter exit, so that a crashed script
# or test session does not leave proxies running (they run in their own session, see `start`).
_LIVE: set[ProxyProcess] = set()
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProxyStartError(RuntimeError):
    pass


def binary(kind: str) -> Path:
    """The executable for `kind` in the running virtualenv.  A kind is "envoy" or "sidecar", optionally
    with a "-label" suffix that names a second, independent instance of the same binary ("envoy-b":
    the differential suite run against envoy itself, which checks that the suite is deterministic)."""
    return Path(sys.executable).parent / kind.split("-", 1)[0]


def render(template: str, **values: object) -> tuple[str, dict[str, object]]:
    """Fill `{name}` placeholders; unknown `{..._port}` ones get free ports.  Returns the text and
    every value used (given and allocated).  An unknown placeholder not ending in `_port` is an error,
    which catches typos."""
    used: dict[str, object] = dict(values)

    def _sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in used:
            if not name.endswith("_port"):
                raise KeyError(f"bootstrap placeholder {{{name}}} has no value")
            used[name] = free_port()
        return str(used[name])

    return _PLACEHOLDER.sub(_sub, template), used


def listener_ports(config: Mapping[str, Any]) -> list[int]:
    """The ports of the static listeners that bind (bind_to_port not false) in a bootstrap dict."""
    ports = []
    for lst in config.get("static_resources", {}).get("listeners", []):
        if lst.get("bind_to_port", True) is False:
            continue
        sa = lst.get("address", {}).get("socket_address", {})
        if "port_value" in sa:
            ports.append(int(sa["port_value"]))
    return ports


def admin_port(config: Mapping[str, Any]) -> int | None:
    sa = config.get("admin", {}).get("address", {}).get("socket_address", {})
    return int(sa["port_value"]) if "port_value" in sa else None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class ProxyProcess:
    """One envoy or sidecar process on one rendered bootstrap."""

    def __init__(
        self, kind: str, config_text: str, workdir: Path | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self.config_text = config_text
        self.config = yaml.safe_load(config_text)
        self.listener_ports = listener_ports(self.config)
        self.admin_port = admin_port(self.config)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix=f"{kind}-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.config_path = self.workdir / f"{kind}-bootstrap.yaml"
        self.stderr_path = self.workdir / f"{kind}.stderr"
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            str(binary(self.kind)),
            "-c",
            str(self.config_path),
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--disable-hot-restart",
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        """Start and wait until ready; ProxyStartError (with stderr) if it exits or is not ready in time."""
        if not binary(self.kind).exists():
            raise ProxyStartError(f"{binary(self.kind)} does not exist")
        self.config_path.write_text(self.config_text)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                # Its own process group: `stop` signals the group, which reaches worker processes
                # the sidecar may fork, and a Ctrl-C to pytest does not hit the proxy mid-test.
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        pending = list(self.listener_ports)
        admin_ok = self.admin_port is None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProxyStartError(f"{self.kind} exited with {self.proc.returncode}\n{self.stderr()}")
            admin_ok = admin_ok or _ready(self.admin_port)  # type: ignore[arg-type]
            pending = [p for p in pending if not _accepts(p)]
            if admin_ok and not pending:
                return self
            time.sleep(0.02)
        self.stop()
        raise ProxyStartError(
            f"{self.kind} not ready after {timeout}s (admin ready={admin_ok}, ports not accepting={pending})"
            f"\n{self.stderr()}"
        )

    def stderr(self, limit: int = 20000) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        _LIVE.discard(self)
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


def start_proxy(
    kind: str,
    template: str,
    values: Mapping[str, object] | None = None,
    *,
    attempts: int = 3,
    timeout: float = 20.0,
) -> tuple[ProxyProcess, dict[str, object]]:
    """Render `template` with `values` and start `kind` on it.  A start that fails is retried with
    fresh ports (a port may be taken between our check and the proxy's bind).  Returns the running
    process and the placeholder values (ports) used."""
    last: ProxyStartError | None = None
    for _ in range(attempts):
        text, used = render(template, **(values or {}))
        proc = ProxyProcess(kind, text)
        try:
            return proc.start(timeout), used
        except ProxyStartError as e:
            proc.close()
            last = e
            if "ddress already in use" not in str(e):
                break
    assert last is not None
    raise last
