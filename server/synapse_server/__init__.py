"""The Synapse platform server: core services, stores, executors, Ray adapters, gRPC layer, CLI."""
