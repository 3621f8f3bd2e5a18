"""Action base classes by kind; see :mod:`synapse_sdk.plugins.actions.inference`."""

__all__: list[str] = []
