"""sidecar: a pure-Python data plane that takes Envoy's place beside an application."""

__version__ = "0.1.0"
# What `--version` prints and /server_info reports; the Envoy API we speak is v3.
ENVOY_API_VERSION = "v3"
