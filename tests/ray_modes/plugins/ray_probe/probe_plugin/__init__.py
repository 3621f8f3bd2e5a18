"""Ray probe test plugin."""
