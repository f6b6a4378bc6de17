"""`--run-validation`: prove the installed rules redirect, as istio-iptables' validation does.

Owns: istio tools/istio-iptables/pkg/validation (validator.go): a server listens on the loopback
address at the outbound and inbound capture ports (15001, 15006) and a client, running as the proxy's
uid/gid, connects from the loopback address to 127.0.0.6 (or ::6) at the probe port (15002).  Only
ISTIO_OUTPUT's "proxy to a non-localhost address over lo" rule sends that connection to
ISTIO_IN_REDIRECT, so it lands on a server socket whose SO_ORIGINAL_DST port is the probe port: then
the rules work.  Nothing arriving before the probe timeout is a failure (istio exits 126).
Also owns reading SO_ORIGINAL_DST (netfilter's getsockopt, IPv4 and IPv6).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import select
import signal
import socket
import struct
import time

from init.config import InitConfig, split

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
EXIT_CODE = 126  # istio constants.ValidationErrorCode


class ValidationError(Exception):
    """The redirection did not work."""


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The destination a REDIRECTed connection was made to (netfilter SO_ORIGINAL_DST)."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # struct sockaddr_in6
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


def _ids(cfg: InitConfig) -> tuple[int | None, int | None]:
    """The first proxy uid and gid as numbers (names are looked up), or None when not switching."""
    if os.geteuid() != 0:
        return None, None
    uid_s = (split(cfg.proxy_uid) or [""])[0]
    gid_s = (split(cfg.proxy_gid) or [""])[0]
    uid = int(uid_s) if uid_s.isdigit() else pwd.getpwnam(uid_s).pw_uid
    gid = int(gid_s) if gid_s.isdigit() else grp.getgrnam(gid_s).gr_gid
    return uid, gid


def run(cfg: InitConfig) -> None:
    """Raise ValidationError unless a proxy-uid connection to <probe address>:<probe port> is
    redirected to one of our listeners within cfg.probe_timeout seconds."""
    is6 = ipaddress.ip_address(cfg.host_ip).version == 6 if cfg.host_ip else cfg.enable_ipv6
    family = socket.AF_INET6 if is6 else socket.AF_INET
    listen_ip, probe_ip = ("::1", "::6") if is6 else ("127.0.0.1", "127.0.0.6")
    listeners = []
    for port in (cfg.proxy_port, cfg.inbound_capture_port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((listen_ip, int(port)))
            sock.listen(16)
            listeners.append(sock)
        except OSError:
            sock.close()  # istio logs and carries on with the other port
    if not listeners:
        raise ValidationError(
            f"no listener available on {listen_ip} ports {cfg.proxy_port},{cfg.inbound_capture_port}"
        )
    deadline = time.monotonic() + cfg.probe_timeout
    uid, gid = _ids(cfg)
    # The client runs in a forked child so that it can take the proxy's uid (the rules match the
    # socket's owner).  Forking without exec is safe here: the init program has no other threads,
    # and it needs no interpreter path the proxy uid may not be allowed to read.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for sock in listeners:
                sock.close()
            if uid is not None and gid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            _client(family, listen_ip, probe_ip, cfg.iptables_probe_port, deadline)
            code = 0
        finally:
            os._exit(code)
    try:
        if not _serve(listeners, cfg.iptables_probe_port, deadline):
            raise ValidationError("validation timeout: iptables rules did not redirect the probe connection")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for sock in listeners:
            sock.close()


def _client(family: int, src: str, dst: str, port: int, deadline: float) -> None:
    """istio Client.Run in a loop: connect from the loopback address to the probe address, close."""
    for _ in range(100000):  # bounded; ends at the deadline at the latest
        if time.monotonic() > deadline:
            return
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.bind((src, 0))
            sock.connect((dst, port))
        except OSError:
            pass  # refused: not redirected (yet); try again
        finally:
            sock.close()
        time.sleep(0.2)


def _serve(listeners: list[socket.socket], probe_port: int, deadline: float) -> bool:
    for _ in range(100000):  # bounded; each pass waits for a connection or the deadline
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select(listeners, [], [], left)
        for listener in ready:
            conn, _ = listener.accept()
            with conn:
                try:
                    _, port = original_dst(conn)
                except OSError:
                    continue  # not redirected: someone connected to the port directly
                try:
                    conn.sendall(str(port).encode())  # istio echoes the original port, for debugging
                except OSError:
                    pass
            if port == probe_port:
                return True
    return False
