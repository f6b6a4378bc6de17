"""The one error type of translation: a field path and a reason, as Envoy's NACK error_detail."""

from __future__ import annotations


class ConfigError(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
