"""Actions of the polyglot client test plugin."""
