"""xDS: configuration from a control plane.

- ads.py: the protocol state of a stream (sans-IO): subscriptions, versions, nonces, ACK/NACK.
- client.py: grpc.aio streams (ADS SotW/Delta, per-type services) with back-off; XdsClient.
- rest.py: REST-JSON polling through the same core.
- config.py: dynamic_resources / ConfigSource translated into frozen models; back-off policy.
- node.py: the Node we announce (bootstrap node, --service-* flags, user agent).

Importing this package creates no gRPC object (workers fork first; see client.py)."""
