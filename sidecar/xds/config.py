"""Where configuration comes from: the bootstrap's dynamic_resources (ads_config, lds_config,
cds_config) and any ConfigSource (an HCM's rds.config_source, a cluster's eds_config, an SDS
sds_config), translated into frozen models the xDS client runs on.

Every set field is used or refused with its path (translate.fields.check_fields), as in translate/.
Refused: transport_api_version V2 (Envoy's words), path and path_config_source (filesystem
subscriptions), `self` and `authorities` sources, AGGREGATED_* api types (xdstp), config_validators,
call credentials and credentials plugins on google_grpc, more than one gRPC service (failover).
Accepted with Envoy's meaning: resource_api_version (any: Envoy 1.40 ignores it too), a gRPC
service's `timeout` and top-level `retry_policy` (unary calls only; xDS streams never use them).

Also here, as pure functions: the reconnect back-off (Envoy's JitteredExponentialBackOffStrategy) and
the gRPC target string for an address or a Unix socket path."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2

from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, duration, opt_duration

# SubscriptionFactory::RetryInitialDelayMs / RetryMaxDelayMs.
DEFAULT_BASE_INTERVAL = 0.5
DEFAULT_MAX_INTERVAL = 30.0
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0  # ConfigSource.initial_fetch_timeout when unset
_V2 = config_source_pb2.ApiVersion.V2


class ApiType(enum.Enum):
    GRPC = "GRPC"  # State of the World
    DELTA_GRPC = "DELTA_GRPC"  # incremental
    REST = "REST"  # JSON polling


@dataclass(frozen=True, slots=True)
class Backoff:
    """Envoy's fully jittered exponential back-off: the k-th retry (k from 0) waits a uniform time in
    [0, min(base * 2**k, max)); a response received resets k to 0 (grpc_stream.h)."""

    base: float = DEFAULT_BASE_INTERVAL
    max: float = DEFAULT_MAX_INTERVAL

    def delay(self, attempt: int, rand: float) -> float:
        interval = self.base * float(1 << min(max(attempt, 0), 62))
        return rand * min(interval, self.max)


@dataclass(frozen=True, slots=True)
class DataSource:
    """A certificate or key: a file read when the channel is made, or the bytes themselves."""

    filename: str = ""
    inline: bytes = b""


@dataclass(frozen=True, slots=True)
class SslCredentials:
    root_certs: DataSource | None = None
    private_key: DataSource | None = None
    cert_chain: DataSource | None = None


@dataclass(frozen=True, slots=True)
class GrpcTarget:
    """One GrpcService.  envoy_grpc names a cluster (the runtime resolves it to an address or a
    Unix socket); google_grpc gives a gRPC target URI."""

    cluster_name: str = ""
    authority: str = ""  # envoy_grpc.authority; defaults to the cluster name
    target_uri: str = ""
    ssl: SslCredentials | None = None  # google_grpc channel_credentials.ssl_credentials
    initial_metadata: tuple[tuple[str, str], ...] = ()
    max_receive_message_length: int = 0  # 0: no limit (Envoy's default)
    channel_args: tuple[tuple[str, str | int], ...] = ()
    backoff: Backoff = Backoff()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """rate_limit_settings: a token bucket on outgoing requests (Envoy: 100 tokens, 10 per second)."""

    max_tokens: int = 100
    fill_rate: float = 10.0


@dataclass(frozen=True, slots=True)
class ApiSource:
    api_type: ApiType
    grpc: GrpcTarget | None = None  # GRPC, DELTA_GRPC
    rest_cluster: str = ""  # REST: cluster_names[0]
    refresh_delay: float = 0.0  # REST: seconds between polls (required)
    request_timeout: float = 1.0  # REST
    node_on_first_message_only: bool = False
    rate_limit: RateLimit | None = None
    # Tells apart sources that must not share a stream: Envoy gives each SDS secret taken from an
    # api_config_source its own subscription, hence its own gRPC stream (xds/sds.py sets the name).
    stream_key: str = ""


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """ads=True: the bootstrap's ADS stream; else `api` is a stream (or poller) of its own."""

    ads: bool = False
    api: ApiSource | None = None
    initial_fetch_timeout: float = DEFAULT_INITIAL_FETCH_TIMEOUT
    path: str = ""  # path_config_source: a watched file holding a DiscoveryResponse (xds/files.py; SDS)


@dataclass(frozen=True, slots=True)
class DynamicResources:
    ads: ApiSource | None = None
    lds: ConfigSource | None = None
    cds: ConfigSource | None = None


def grpc_target_for(host: str = "", port: int = 0, pipe: str = "") -> str:
    """The gRPC target string for a socket address or a Unix socket path.  Relative paths stay
    relative (pilot-agent's ./etc/istio/proxy/XDS is relative to the proxy's working directory)."""
    if pipe:
        return f"unix:{pipe}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------------------------ translation


def translate_dynamic_resources(
    pb: bootstrap_pb2.Bootstrap.DynamicResources, path: str = "dynamic_resources"
) -> DynamicResources:
    check_fields(pb, path, handled=("ads_config", "lds_config", "cds_config"))
    ads = None
    if pb.HasField("ads_config"):
        ads = translate_api_source(pb.ads_config, f"{path}.ads_config")
        if ads.api_type is ApiType.REST:
            raise ConfigError(
                f"{path}.ads_config.api_type", "ADS needs api_type GRPC or DELTA_GRPC, not REST"
            )
    lds = translate_config_source(pb.lds_config, f"{path}.lds_config") if pb.HasField("lds_config") else None
    cds = translate_config_source(pb.cds_config, f"{path}.cds_config") if pb.HasField("cds_config") else None
    for name, src in (("lds_config", lds), ("cds_config", cds)):
        if src is not None and src.ads and ads is None:
            raise ConfigError(f"{path}.{name}.ads", "an ads config source needs dynamic_resources.ads_config")
    return DynamicResources(ads=ads, lds=lds, cds=cds)


def translate_config_source(pb: config_source_pb2.ConfigSource, path: str) -> ConfigSource:
    check_fields(
        pb,
        path,
        handled=("ads", "api_config_source", "initial_fetch_timeout"),
        ignored=("resource_api_version",),
    )
    timeout = opt_duration(pb, "initial_fetch_timeout", DEFAULT_INITIAL_FETCH_TIMEOUT)
    which = pb.WhichOneof("config_source_specifier")
    if which == "ads":
        check_fields(pb.ads, f"{path}.ads", handled=())
        return ConfigSource(ads=True, initial_fetch_timeout=timeout)
    if which == "api_config_source":
        api = translate_api_source(pb.api_config_source, f"{path}.api_config_source")
        return ConfigSource(api=api, initial_fetch_timeout=timeout)
    if which is None:
        raise ConfigError(path, "a config source needs one of ads or api_config_source")
    raise ConfigError(f"{path}.{which}", "this config source is not supported by sidecar yet")


def translate_api_source(pb: config_source_pb2.ApiConfigSource, path: str) -> ApiSource:
    check_fields(
        pb,
        path,
        handled=(
            "api_type",
            "transport_api_version",
            "grpc_services",
            "cluster_names",
            "refresh_delay",
            "request_timeout",
            "set_node_on_first_message_only",
            "rate_limit_settings",
        ),
    )
    if pb.transport_api_version == _V2:
        # Envoy's Config::Utility::checkTransportVersion (AUTO, the default, is taken as V3).
        raise ConfigError(
            f"{path}.transport_api_version",
            "V2 xDS transport protocol version is deprecated. The v2 xDS major version has been removed "
            "and is no longer supported. See the advice in https://www.envoyproxy.io/docs/envoy/latest/faq/api/envoy_v3.",
        )
    kind = config_source_pb2.ApiConfigSource.ApiType.Name(pb.api_type)
    if kind not in ApiType.__members__:
        raise ConfigError(f"{path}.api_type", f"{kind} is not supported by sidecar yet")
    api_type = ApiType[kind]
    rate = None
    if pb.HasField("rate_limit_settings"):
        rl = pb.rate_limit_settings
        check_fields(rl, f"{path}.rate_limit_settings", handled=("max_tokens", "fill_rate"))
        rate = RateLimit(
            max_tokens=rl.max_tokens.value if rl.HasField("max_tokens") else 100,
            fill_rate=rl.fill_rate.value if rl.HasField("fill_rate") else 10.0,
        )
        if rate.fill_rate <= 0:
            raise ConfigError(f"{path}.rate_limit_settings.fill_rate", "value must be greater than 0")
    common = {"node_on_first_message_only": pb.set_node_on_first_message_only, "rate_limit": rate}
    if api_type is ApiType.REST:
        if pb.grpc_services:
            raise ConfigError(
                f"{path}.grpc_services",
                "an ApiConfigSource that is not a gRPC type must not have a gRPC service specified",
            )
        if len(pb.cluster_names) != 1:
            raise ConfigError(f"{path}.cluster_names", "REST must have a singleton cluster name specified")
        if not pb.HasField("refresh_delay"):
            raise ConfigError(
                f"{path}.refresh_delay", "refresh_delay is required for REST API configuration sources"
            )
        return ApiSource(
            api_type,
            rest_cluster=pb.cluster_names[0],
            refresh_delay=duration(pb.refresh_delay),
            request_timeout=opt_duration(pb, "request_timeout", 1.0),
            **common,
        )
    if pb.cluster_names:
        raise ConfigError(f"{path}.cluster_names", f"{kind} must not have a cluster name specified")
    if pb.HasField("refresh_delay") or pb.HasField("request_timeout"):
        field = "refresh_delay" if pb.HasField("refresh_delay") else "request_timeout"
        raise ConfigError(f"{path}.{field}", f"only REST sources poll; {kind} does not use {field}")
    if len(pb.grpc_services) != 1:
        raise ConfigError(f"{path}.grpc_services", "exactly one gRPC service is supported (no failover yet)")
    grpc = translate_grpc_service(pb.grpc_services[0], f"{path}.grpc_services[0]")
    return ApiSource(api_type, grpc=grpc, **common)


def translate_grpc_service(pb: grpc_service_pb2.GrpcService, path: str) -> GrpcTarget:
    # `timeout` and the top-level `retry_policy` apply to unary calls; an xDS stream has neither.
    check_fields(
        pb,
        path,
        handled=("envoy_grpc", "google_grpc", "initial_metadata"),
        ignored=("timeout", "retry_policy"),
    )
    metadata = tuple((h.key.lower(), h.value) for h in pb.initial_metadata)
    for i, h in enumerate(pb.initial_metadata):
        if not h.key or h.key.startswith(":"):
            raise ConfigError(f"{path}.initial_metadata[{i}].key", f"invalid gRPC metadata key '{h.key}'")
    if pb.HasField("envoy_grpc"):
        eg = pb.envoy_grpc
        ep = f"{path}.envoy_grpc"
        check_fields(
            eg,
            ep,
            handled=("cluster_name", "authority", "retry_policy", "max_receive_message_length"),
            ignored=("skip_envoy_headers",),
        )
        if not eg.cluster_name:
            raise ConfigError(f"{ep}.cluster_name", "value length must be at least 1 characters")
        return GrpcTarget(
            cluster_name=eg.cluster_name,
            authority=eg.authority or eg.cluster_name,
            initial_metadata=metadata,
            max_receive_message_length=eg.max_receive_message_length.value
            if eg.HasField("max_receive_message_length")
            else 0,
            backoff=_backoff(eg, ep),
        )
    if pb.HasField("google_grpc"):
        gg = pb.google_grpc
        gp = f"{path}.google_grpc"
        check_fields(
            gg,
            gp,
            handled=("target_uri", "channel_credentials", "channel_args"),
            ignored=("stat_prefix", "per_stream_buffer_limit_bytes"),
        )
        if not gg.target_uri:
            raise ConfigError(f"{gp}.target_uri", "value length must be at least 1 characters")
        return GrpcTarget(
            target_uri=gg.target_uri,
            ssl=_ssl(gg, gp),
            initial_metadata=metadata,
            channel_args=_channel_args(gg, gp),
        )
    raise ConfigError(path, "a gRPC service needs one of envoy_grpc or google_grpc")


def _backoff(eg: grpc_service_pb2.GrpcService.EnvoyGrpc, path: str) -> Backoff:
    """envoy_grpc.retry_policy.retry_back_off (Utility::prepareJitteredExponentialBackOffStrategy);
    the rest of a RetryPolicy means nothing to a stream."""
    if not eg.HasField("retry_policy"):
        return Backoff()
    rp = eg.retry_policy
    check_fields(rp, f"{path}.retry_policy", handled=("retry_back_off",), ignored=("num_retries", "retry_on"))
    if not rp.HasField("retry_back_off"):
        return Backoff()
    bo = rp.retry_back_off
    bp = f"{path}.retry_policy.retry_back_off"
    check_fields(bo, bp, handled=("base_interval", "max_interval"))
    base = duration(bo.base_interval)
    if base <= 0:
        raise ConfigError(f"{bp}.base_interval", "value must be greater than 0s")
    top = opt_duration(bo, "max_interval", base * 10)
    if top < base:
        raise ConfigError(
            f"{bp}.max_interval", "max_interval must be greater than or equal to the base_interval"
        )
    return Backoff(base, top)


def _data_source(pb: base_pb2.DataSource, path: str) -> DataSource:
    which = pb.WhichOneof("specifier")
    if which == "filename":
        return DataSource(filename=pb.filename)
    if which == "inline_bytes":
        return DataSource(inline=pb.inline_bytes)
    if which == "inline_string":
        return DataSource(inline=pb.inline_string.encode())
    raise ConfigError(f"{path}.{which}" if which else path, "data source is not supported here")


def _ssl(gg: grpc_service_pb2.GrpcService.GoogleGrpc, path: str) -> SslCredentials | None:
    if not gg.HasField("channel_credentials"):
        return None
    cc = gg.channel_credentials
    cp = f"{path}.channel_credentials"
    which = cc.WhichOneof("credential_specifier")
    if which != "ssl_credentials":
        raise ConfigError(f"{cp}.{which}", "only ssl_credentials are supported by sidecar yet")
    ssl = cc.ssl_credentials
    sp = f"{cp}.ssl_credentials"
    check_fields(ssl, sp, handled=("root_certs", "private_key", "cert_chain"))
    return SslCredentials(
        *(
            _data_source(getattr(ssl, f), f"{sp}.{f}") if ssl.HasField(f) else None
            for f in ("root_certs", "private_key", "cert_chain")
        )
    )


def _channel_args(
    gg: grpc_service_pb2.GrpcService.GoogleGrpc, path: str
) -> tuple[tuple[str, str | int], ...]:
    out: list[tuple[str, str | int]] = []
    for key, value in sorted(gg.channel_args.args.items()):
        if value.WhichOneof("value_specifier") == "int_value":
            out.append((key, value.int_value))
        elif value.WhichOneof("value_specifier") == "string_value":
            out.append((key, value.string_value))
        else:
            raise ConfigError(f"{path}.channel_args.args[{key}]", "a channel argument needs a value")
    return tuple(out)
