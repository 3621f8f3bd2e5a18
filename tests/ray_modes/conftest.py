"""Fixtures of the Ray-mode tests (defined in ray_modes_support, shared with the benchmark)."""

from ray_modes_support import platform, ray_cluster

__all__ = ["platform", "ray_cluster"]
