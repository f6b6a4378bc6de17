"""normalize_path (http/edge.py): properties; Envoy's exact outputs are pinned by
tests/differential/test_via_and_slashes.py."""

from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.edge import normalize_path

SEGMENT = st.sampled_from([b"a", b"b", b".", b"..", b"%2e", b"%2E%2e", b"", b"%41", b"%2F", b"%zz", b"x.y", b"\\\\"])


@given(st.lists(SEGMENT, max_size=8), st.sampled_from([b"", b"?q=/../x", b"?"]))
def test_idempotent_no_dot_segments_query_kept(segments: list[bytes], query: bytes) -> None:
    path = b"/" + b"/".join(segments) + query
    once = normalize_path(path)
    assert normalize_path(once) == once
    head = once.split(b"?", 1)[0]
    parts = head.split(b"/")[1:]
    assert b"." not in parts and b".." not in parts
    assert once.endswith(query)
    assert head.startswith(b"/")
