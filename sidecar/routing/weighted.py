"""Weighted cluster choice (RouteAction.weighted_clusters), as Envoy's WeightedClusterSpecifierPlugin.

Pure: the caller passes the random value (Envoy uses the stream's random value).  Must not know how
the random value is produced nor anything about the chosen cluster."""

from __future__ import annotations

from sidecar.model.route import ClusterWeight


def pick(weighted: tuple[ClusterWeight, ...], total: int, rand: int) -> ClusterWeight:
    """The cluster whose interval holds `rand % total`.

    The intervals are [0, w1), [w1, w1 + w2), ... in configuration order, so a cluster of weight 0
    owns an empty interval and is never picked.  `total` must be the sum of the weights (translate
    computes it; the deprecated WeightedCluster.total_weight is ignored, as in Envoy 1.40)."""
    selected = rand % total
    end = 0
    for entry in weighted:
        end += entry.weight
        if selected < end:
            return entry
    raise ValueError(f"total weight {total} exceeds the sum of weights {end}")
