"""The reference document's inference examples, packaged as a plugin."""
