"""The init container (traffic capture with iptables/nftables): arrives with issue 5."""
