"""The gRPC layer: servicers over the core, error mapping, auth, and the server assembly."""
