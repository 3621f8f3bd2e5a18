"""Ray pip probe test plugin."""
