"""An in-memory TLS handshake (ssl.MemoryBIO, no sockets, no event loop) between two contexts, for
unit tests of contexts and verdicts."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass
class Pair:
    server: ssl.SSLObject
    client: ssl.SSLObject
    server_error: BaseException | None = None
    client_error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str | None = None) -> Pair:
    """Drive both sides until each finished or failed (bounded: 50 rounds)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=sni)
    pair = Pair(server, client)
    done = {"s": False, "c": False}
    for _ in range(50):
        for name, obj in (("c", client), ("s", server)):
            if done[name]:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as exc:
                done[name] = True
                if name == "s":
                    pair.server_error = exc
                else:
                    pair.client_error = exc
        # Shuttle bytes both ways.
        moved = c_out.pending or s_out.pending
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
        if done["s"] and done["c"] and not moved:
            break
        if not moved and (done["s"] or done["c"]):
            # One side failed or finished and the other waits for bytes that will never come.
            if pair.server_error or pair.client_error:
                break
    # TLS 1.3: a client certificate is judged after the client finished; let the client see the
    # server's alert (or tickets) by reading once.
    if pair.server_error is not None and pair.client_error is None and s_out.pending:
        c_in.write(s_out.read())
    if pair.server_error is not None and pair.client_error is None:
        try:
            client.read(1)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            pair.client_error = exc
    return pair
