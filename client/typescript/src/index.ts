// Public entry point of the TypeScript client: the high-level Client (jobs, results, infer,
// typed errors), the transport-level createSynapseClient, and the generated
// messages and service descriptors of synapse.plugin.v1.
export { DEFAULT_MAX_MESSAGE_BYTES, bearerAuth, createSynapseClient } from "./client.js";
export type { SynapseClient, SynapseClientOptions } from "./client.js";
export {
  DEFAULT_PORT,
  ENV_SERVER,
  ENV_TLS,
  ENV_TLS_CA,
  ENV_TLS_CERT,
  ENV_TLS_KEY,
  ENV_TLS_SERVER_NAME,
  ENV_TOKEN,
  connectionFromEnv,
  normalizeAddress,
  tlsFromFiles,
} from "./config.js";
export type { EnvConnection, TlsConfig, TlsFiles } from "./config.js";
export {
  AbortedError,
  AlreadyExistsError,
  ClientConfigError,
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  JobCancelledError,
  JobFailedError,
  JobTimeoutError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ProtocolError,
  RequestCancelledError,
  ResourceExhaustedError,
  RpcError,
  STATUS_TO_ERROR,
  SynapseError,
  TransportSecurityError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  UnknownError,
  badRequestViolations,
  errorInfo,
  fromConnectError,
} from "./errors.js";
export type { ChannelSecurity, ErrorInfo, FieldViolation, JobErrorDetails } from "./errors.js";
export { Client, DEFAULT_RETRY, JobHandle } from "./synapse.js";
export type {
  ClientOptions,
  EventsOptions,
  InferRequest,
  InferResult,
  InferTarget,
  RetryPolicy,
  RunActionOptions,
} from "./synapse.js";
export * from "./gen/synapse/plugin/v1/action_service_pb.js";
export * from "./gen/synapse/plugin/v1/deployment_pb.js";
export * from "./gen/synapse/plugin/v1/deployment_service_pb.js";
export * from "./gen/synapse/plugin/v1/inference_service_pb.js";
export * from "./gen/synapse/plugin/v1/job_event_pb.js";
export * from "./gen/synapse/plugin/v1/job_pb.js";
export * from "./gen/synapse/plugin/v1/model_pb.js";
export * from "./gen/synapse/plugin/v1/model_service_pb.js";
export * from "./gen/synapse/plugin/v1/plugin_pb.js";
export * from "./gen/synapse/plugin/v1/tensor_pb.js";
