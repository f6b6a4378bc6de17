"""Development tools shipped with the sidecar (not used by the proxy itself).

`python -m sidecar.devtools.ads_server --dir DIR` is a small file-driven xDS control plane (gRPC
ADS SotW and Delta, the per-type services, REST-JSON) for tests, the demo and local experiments."""
