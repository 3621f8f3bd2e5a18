"""Ray adapters: the server's Ray runtime, the Infer router and the deployment backend.

The only server package that imports Ray (lazily, on first need).
"""

from synapse_server.ray._runtime import RayRuntime, RayRuntimeConfig
from synapse_server.ray._serve import ServeDeploymentBackend, ServeRouter

__all__ = ["RayRuntime", "RayRuntimeConfig", "ServeDeploymentBackend", "ServeRouter"]
