"""Frozen, slotted configuration objects: what translate/ builds and the data path reads.

Nothing here does I/O or knows protobuf.  A `Snapshot` is built once per config version off the hot
path and swapped by reference (ARCHITECTURE.md section 2)."""
