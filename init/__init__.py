"""The init container program (`sidecar-init`): istio-iptables' traffic capture, in Python.

flags.py + config.py (settings) -> rules.py (iptables) / nft.py (native nftables), pure ->
iptables_state.py (idempotent restore scripts, pure) -> apply.py + routes.py (the only I/O) ->
validation.py; __main__.py wires them.  See issue 5.
"""
