"""path_config_source subscriptions: a file holding a DiscoveryResponse, re-read when it changes
(Envoy's FilesystemSubscriptionImpl), through the same core as the gRPC streams (ads.py).

The file is YAML or JSON (the protobuf JSON mapping), as Envoy reads `.yaml`/`.json` files.  Envoy
watches the file with inotify and reacts when a new file is moved into place (the atomic-rename
way to update it); we check its identity (inode, size, mtime) every `interval` seconds, which
catches a rename and an in-place rewrite alike.  Each new content is applied like a SotW response
of the subscribed type: resources nobody subscribed to are ignored, a refused update keeps the
previous config (and counts update_rejected; there is no server to NACK), a file that cannot be read
or parsed counts update_failure and changes nothing.  Used for SDS (sds_config.path_config_source);
the initial fetch timeout of the source bounds the wait for a file that is not there yet."""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from sidecar.translate.common import preload_types
from sidecar.xds.ads import XdsState
from sidecar.xds.client import ApplyFn, Mux, TimeoutFn

log = logging.getLogger("sidecar.config")


def load_response(path: str, type_url: str) -> Any:
    """The DiscoveryResponse in `path` (YAML or JSON); raises OSError or ValueError."""
    with open(path, "rb") as f:
        data = yaml.safe_load(f.read())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a DiscoveryResponse")
    preload_types(data)
    resp = discovery_pb2.DiscoveryResponse()
    try:
        json_format.ParseDict(data, resp)
    except json_format.ParseError as e:
        raise ValueError(f"{path}: {e}") from None
    if not resp.type_url:
        resp.type_url = type_url  # Envoy does not require it in the file
    return resp


class FileMux(Mux):
    """One file, one type."""

    def __init__(
        self,
        state: XdsState,
        apply: ApplyFn,
        on_timeout: TimeoutFn | None,
        path: str,
        type_url: str,
        interval: float = 1.0,
    ) -> None:
        super().__init__(state, apply, on_timeout)
        self.path = path
        self.type_url = type_url
        self.interval = interval
        self.reads = 0

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    async def run(self) -> None:
        seen: tuple[Any, ...] | None = None
        while not self._stopped.is_set():
            # Read again when the file changed, or the names wanted did (a new name may be in it).
            names = self.state.names(self.type_url)
            ident = self._identity()
            now = (ident, names)
            if ident is not None and names is not None and now != seen:
                seen = now
                try:
                    resp = load_response(self.path, self.type_url)
                except (OSError, ValueError, yaml.YAMLError) as e:
                    log.warning("config file %s not loaded: %s", self.path, e)
                    st = self.state.stats(self.type_url)
                    if st is not None:
                        st.update_failure += 1
                        st.update_attempt += 1
                else:
                    self.reads += 1
                    if resp.type_url == self.type_url:
                        await self.handle(resp)
                    else:
                        log.warning("config file %s holds %s, not %s", self.path, resp.type_url, self.type_url)
            await self.sleep(self.interval)
