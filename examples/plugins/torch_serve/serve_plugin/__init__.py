"""The reference document's model deployment example, as a plugin."""
