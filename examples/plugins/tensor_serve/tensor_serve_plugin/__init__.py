"""An MLP endpoint on binary tensors, as a plugin."""
