"""Load balancers: pure pickers over a host set's weights (`pick` returns an index)."""
