"""A deterministic simulator of a governor cluster: the real decide(), modelled effects."""
