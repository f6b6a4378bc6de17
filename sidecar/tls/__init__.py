"""TLS for listeners and clusters (Envoy's envoy.transport_sockets.tls), the way Istio uses it.

- `identity`: pure peer-certificate facts and checks (SANs, SPIFFE IDs, Envoy's SAN matching).
- `contexts`: model + secret bytes -> ssl.SSLContext, built once per content (`ContextCache`).
- `handshake`: `ServerTls` / `ClientTls`: a context version plus the post-handshake verdict and stats.
- `secrets`: the SecretStore (named, inline and file-backed secrets; rotation by polling).
- `provider`: `TlsProvider`, the live ServerTls/ClientTls of one transport socket.
- `stats`: the `ssl.*` counters; `native`: OpenSSL settings Python's ssl module lacks."""
