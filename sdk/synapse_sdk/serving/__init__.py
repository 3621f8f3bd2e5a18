"""The contract between the platform server and serve replicas: public and versioned.

A serve plugin's replicas run the SDK version its ``requirements.txt`` installs, which may
differ from the server's. Everything the two sides share is defined here, at stable paths:

* :mod:`synapse_sdk.serving.wire`: the request, reply and replica-info messages (plain
  dicts on the wire), the protocol version and its rules, the replica method names;
* :mod:`synapse_sdk.serving.model_ids`: the signed multiplexed model ids and their key
  hierarchy (the server mints, the replica verifies);
* the replicas' direct endpoint: its method names, metadata, registry entries and message
  encoding (msgpack of the wire messages);
* the environment the platform gives deployment jobs (application name, route prefix,
  signing key, tenant, replica message limit, replica download address).

Plugin authors do not need this package: they write ``BaseServeDeployment`` and
``BaseDeploymentAction`` subclasses (:mod:`synapse_sdk.plugins.actions.inference`).
"""

from synapse_sdk.serving._deploy import (
    DEFAULT_REPLICA_MESSAGE_BYTES,
    RELEASE_CHECKSUM_ENV,
    RELEASE_CODE_ENV,
    REPLICA_MESSAGE_BYTES_ENV,
    REPLICA_PLATFORM_ADDRESS_ENV,
    ServeDeploymentError,
)
from synapse_sdk.serving._direct import (
    DIRECT_APP_METADATA,
    DIRECT_ENV,
    DIRECT_INFER,
    DIRECT_INFER_GROUP,
    DIRECT_KV_NAMESPACE,
    DIRECT_MODEL_METADATA,
    DIRECT_REGISTRY_VERSION,
    DirectMessageError,
    pack_direct_message,
    registry_key,
    registry_prefix,
    unpack_direct_message,
)
from synapse_sdk.serving.model_ids import (
    SERVE_SIGNING_KEY_ENV,
    SERVE_TENANT_ENV,
    ServeModelClaims,
    ServeModelIdError,
    ServeModelIdSigner,
    ServeModelIdVerifier,
    derive_app_key,
    derive_tenant_key,
    looks_like_serve_model_id,
    unverified_claims,
)
from synapse_sdk.serving.wire import (
    INFER_GROUP_METHOD,
    INFER_METHOD,
    INFER_STREAM_METHOD,
    MAX_GROUP_SIZE,
    PROTOCOL_VERSION,
    REPLICA_INFO_METHOD,
    ErrorKind,
    ProtocolVersionError,
    ReplicaInfo,
    ServeReply,
    ServeRequest,
    TensorPayload,
    WireFormatError,
    format_version,
)

__all__ = [
    "DEFAULT_REPLICA_MESSAGE_BYTES",
    "DIRECT_APP_METADATA",
    "DIRECT_ENV",
    "DIRECT_INFER",
    "DIRECT_INFER_GROUP",
    "DIRECT_KV_NAMESPACE",
    "DIRECT_MODEL_METADATA",
    "DIRECT_REGISTRY_VERSION",
    "INFER_GROUP_METHOD",
    "INFER_METHOD",
    "INFER_STREAM_METHOD",
    "MAX_GROUP_SIZE",
    "PROTOCOL_VERSION",
    "RELEASE_CHECKSUM_ENV",
    "RELEASE_CODE_ENV",
    "REPLICA_INFO_METHOD",
    "REPLICA_MESSAGE_BYTES_ENV",
    "REPLICA_PLATFORM_ADDRESS_ENV",
    "SERVE_SIGNING_KEY_ENV",
    "SERVE_TENANT_ENV",
    "ErrorKind",
    "ProtocolVersionError",
    "ReplicaInfo",
    "ServeDeploymentError",
    "ServeModelClaims",
    "ServeModelIdError",
    "ServeModelIdSigner",
    "ServeModelIdVerifier",
    "ServeReply",
    "DirectMessageError",
    "ServeRequest",
    "TensorPayload",
    "WireFormatError",
    "derive_app_key",
    "derive_tenant_key",
    "format_version",
    "looks_like_serve_model_id",
    "pack_direct_message",
    "registry_key",
    "registry_prefix",
    "unpack_direct_message",
    "unverified_claims",
]
