"""Connection pools, one per host per worker: http1 (keep-alive, one request at a time)."""
