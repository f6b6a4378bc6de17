"""HttpConnectionManager.internal_address_config -> model.route.InternalAddressConfig.

Envoy 1.40 (HttpConnectionManagerConfig's createInternalAddressConfig): without the message no
address is internal (translate/lds.py then leaves the model field None); with it, `unix_sockets`
says whether a peer on a Unix socket is internal and `cidr_ranges` lists the internal IP ranges.
A message with no ranges falls back to Envoy's legacy test (see http/edge.py InternalAddresses).

Validation is Envoy's: CidrRange.address_prefix needs at least one character and must parse
(`invalid ip/mask combo '<ip>/<len>' (format is <ip>/<# mask bits>)`), prefix_len is at most 128,
and a length beyond the family's width means the whole address (10.0.0.0/40 is 10.0.0.0/32)."""

from __future__ import annotations

import ipaddress

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from sidecar.model.route import InternalAddressConfig
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_uint


def translate_internal_address_config(
    pb: hcm_pb2.HttpConnectionManager.InternalAddressConfig, path: str
) -> InternalAddressConfig:
    check_fields(pb, path, handled=("unix_sockets", "cidr_ranges"))
    ranges = []
    for i, r in enumerate(pb.cidr_ranges):
        rp = f"{path}.cidr_ranges[{i}]"
        check_fields(r, rp, handled=("address_prefix", "prefix_len"))
        if not r.address_prefix:
            raise ConfigError(f"{rp}.address_prefix", "value length must be at least 1 characters")
        length = opt_uint(r, "prefix_len", 0)
        if length > 128:
            raise ConfigError(f"{rp}.prefix_len", "value must be less than or equal to 128")
        try:
            if "%" in r.address_prefix:  # inet_pton takes no IPv6 zone index
                raise ValueError(r.address_prefix)
            ip = ipaddress.ip_address(r.address_prefix)
        except ValueError:
            raise ConfigError(
                rp, f"invalid ip/mask combo '{r.address_prefix}/{length}' (format is <ip>/<# mask bits>)"
            ) from None
        length = min(length, ip.max_prefixlen)
        ranges.append(str(ipaddress.ip_network(f"{ip}/{length}", strict=False)))
    return InternalAddressConfig(unix_sockets=pb.unix_sockets, cidr_ranges=tuple(ranges))


def hcm_internal_address_config(pb: hcm_pb2.HttpConnectionManager, path: str) -> InternalAddressConfig | None:
    """The model of `pb.internal_address_config`, or None when the connection manager has none
    (the hook translate/lds.py calls)."""
    if not pb.HasField("internal_address_config"):
        return None
    return translate_internal_address_config(pb.internal_address_config, f"{path}.internal_address_config")
