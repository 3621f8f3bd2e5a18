// Public entry point of the TypeScript client: the convenience layer plus the generated
// messages and service descriptors of synapse.plugin.v1.
export { DEFAULT_MAX_MESSAGE_BYTES, bearerAuth, createSynapseClient } from "./client.js";
export type { SynapseClient, SynapseClientOptions } from "./client.js";
export { badRequestViolations, errorInfo } from "./errors.js";
export type { ErrorInfo, FieldViolation } from "./errors.js";
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
