"""Generated stubs of the vendored Open Inference Protocol v2 proto (tools/gen-protos)."""
