"""Per-architecture knowledge, kept as data: Q/K/V layouts (families/*.json) and tensor roles (roles.json)."""
