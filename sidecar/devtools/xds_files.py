"""The file layout the dev ADS server reads, and turning file contents into xDS resources.

A directory holds one file per resource type, each a list of resources in Envoy's JSON/YAML form
(the protobuf JSON mapping, as in a bootstrap's static_resources):

    DIR/listeners.yaml   envoy.config.listener.v3.Listener              (named by `name`)
    DIR/routes.yaml      envoy.config.route.v3.RouteConfiguration       (`name`)
    DIR/clusters.yaml    envoy.config.cluster.v3.Cluster                (`name`)
    DIR/endpoints.yaml   envoy.config.endpoint.v3.ClusterLoadAssignment (`cluster_name`)
    DIR/secrets.yaml     envoy.extensions.transport_sockets.tls.v3.Secret (`name`)

`.yml` and `.json` work too.  A file may also be a mapping with a `resources:` list.  Instead of
(or as well as) those, `DIR/resources.yaml` may hold all types as a mapping `{listeners: [...],
routes: [...], ...}`; a type found in both places is an error.  A missing file means no resources
of that type.  An `@type` key on a resource is optional (checked against the file's type if given).

`parse_type` and `merge` are pure (text in, messages out); `load_dir` and `dir_signature` read the
directory.  A file that does not parse raises `FileError`, so the server keeps its previous state."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from sidecar.translate.common import preload_types

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# file stem -> (type URL, message class, the field that names a resource)
KINDS: dict[str, tuple[str, type[Message], str]] = {
    "listeners": (LISTENER, listener_pb2.Listener, "name"),
    "routes": (ROUTE, route_pb2.RouteConfiguration, "name"),
    "clusters": (CLUSTER, cluster_pb2.Cluster, "name"),
    "endpoints": (ENDPOINT, endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
    "secrets": (SECRET, secret_pb2.Secret, "name"),
}
TYPE_URLS = tuple(t for t, _, _ in KINDS.values())
STEM_OF = {t: stem for stem, (t, _, _) in KINDS.items()}
SUFFIXES = (".yaml", ".yml", ".json")
ALL_IN_ONE = "resources"
MAX_FILE = 64 * 1024 * 1024  # a dev tool, but still bounded

Resources = dict[str, dict[str, Message]]  # type URL -> name -> message


class FileError(ValueError):
    """A resource file that cannot be used (the message says which file and why)."""


def parse_type(stem: str, docs: Any, where: str) -> dict[str, Message]:
    """One type's resources from a parsed YAML/JSON document (a list, or {resources: [...]})."""
    type_url, cls, name_field = KINDS[stem]
    if isinstance(docs, Mapping) and "resources" in docs:
        docs = docs["resources"]
    if docs is None:
        docs = []
    if not isinstance(docs, list):
        raise FileError(f"{where}: expected a list of {stem}, got {type(docs).__name__}")
    out: dict[str, Message] = {}
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise FileError(f"{where}[{i}]: expected a mapping, got {type(doc).__name__}")
        doc = dict(doc)
        given = doc.pop("@type", None)
        if given is not None and str(given).rsplit("/", 1)[-1] != type_url.rsplit("/", 1)[-1]:
            raise FileError(f"{where}[{i}]: @type {given} in the {stem} file")
        msg = cls()
        try:
            preload_types(doc)  # typed_config Anys need their message classes imported
            json_format.ParseDict(doc, msg)
        except (json_format.ParseError, KeyError, TypeError, ValueError) as e:
            raise FileError(f"{where}[{i}]: {e}") from e
        name = str(getattr(msg, name_field))
        if not name:
            raise FileError(f"{where}[{i}]: the {stem} resource has no {name_field}")
        if name in out:
            raise FileError(f"{where}[{i}]: duplicate {stem} resource {name!r}")
        out[name] = msg
    return out


def merge(per_file: Mapping[str, Any], all_in_one: Any, where: str) -> Resources:
    """Every type's resources from per-type documents (stem -> doc) and an optional all-in-one doc."""
    if all_in_one is not None and not isinstance(all_in_one, Mapping):
        raise FileError(f"{where}: expected a mapping of type names ({', '.join(KINDS)})")
    extra = set(all_in_one or {}) - set(KINDS)
    if extra:
        raise FileError(f"{where}: unknown keys {sorted(extra)} (expected {', '.join(KINDS)})")
    out: Resources = {}
    for stem, (type_url, _, _) in KINDS.items():
        if stem in per_file and all_in_one and stem in all_in_one:
            raise FileError(f"{stem} given both in {stem}.* and in {where}")
        if stem in per_file:
            out[type_url] = parse_type(stem, per_file[stem], stem)
        elif all_in_one and stem in all_in_one:
            out[type_url] = parse_type(stem, all_in_one[stem], f"{where}:{stem}")
        else:
            out[type_url] = {}
    return out


def _files(directory: Path) -> dict[str, Path]:
    """stem -> the file for it (the first suffix found); two suffixes for one stem is an error."""
    found: dict[str, Path] = {}
    for stem in (*KINDS, ALL_IN_ONE):
        for suffix in SUFFIXES:
            path = directory / f"{stem}{suffix}"
            if path.is_file():
                if stem in found:
                    raise FileError(f"both {found[stem].name} and {path.name} in {directory}")
                found[stem] = path
    return found


def _read(path: Path) -> Any:
    if path.stat().st_size > MAX_FILE:
        raise FileError(f"{path}: larger than {MAX_FILE} bytes")
    try:
        return yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise FileError(f"{path}: {e}") from e


def load_dir(directory: Path) -> Resources:
    files = _files(directory)
    per_file = {stem: _read(p) for stem, p in files.items() if stem != ALL_IN_ONE}
    one = files.get(ALL_IN_ONE)
    return merge(per_file, _read(one) if one else None, one.name if one else ALL_IN_ONE)


def dir_signature(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when a resource file is written, replaced, added or removed."""
    sig = []
    for stem in (*KINDS, ALL_IN_ONE):
        for suffix in SUFFIXES:
            try:
                st = os.stat(directory / f"{stem}{suffix}")
            except OSError:
                continue
            sig.append((stem + suffix, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sig)
