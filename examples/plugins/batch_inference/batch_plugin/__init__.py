"""Batch inference example plugin (see config.yaml for its actions)."""
