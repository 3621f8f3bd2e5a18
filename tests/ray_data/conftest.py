"""Fixtures of the Ray Data runner tests (defined in ray_data_support)."""

from ray_data_support import data_cluster, idle

__all__ = ["data_cluster", "idle"]
