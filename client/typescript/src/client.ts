// Convenience layer over the generated service descriptors: one transport with bearer-token
// auth, and a typed client per public service.
import type { SecureClientSessionOptions } from "node:http2";
import { type Client, type Interceptor, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ActionService } from "./gen/synapse/plugin/v1/action_service_pb.js";
import { DeploymentService } from "./gen/synapse/plugin/v1/deployment_service_pb.js";
import { InferenceService } from "./gen/synapse/plugin/v1/inference_service_pb.js";
import { ModelService } from "./gen/synapse/plugin/v1/model_service_pb.js";
import { type TlsConfig, checkTls } from "./config.js";

/** Options of {@link createSynapseClient}. */
export interface SynapseClientOptions {
  /** Bearer token sent as `authorization: Bearer <token>` on every call; omit for none. */
  token?: string;
  /**
   * TLS: `true` for the system's trusted CAs, or a {@link TlsConfig} with the CA that issued
   * the server's certificate and, for mutual TLS, a client certificate and key. The default is
   * plaintext HTTP/2.
   */
  tls?: boolean | TlsConfig;
  /** Extra interceptors, run after the auth interceptor. */
  interceptors?: Interceptor[];
  /**
   * The largest message sent or received, in bytes; match the server's `max_message_bytes`
   * (default 64 MiB). A request over it fails before it is sent, with `ResourceExhausted`.
   */
  maxMessageBytes?: number;
}

/** The server's default limit on RunAction and Infer messages and their answers. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Typed clients for the public services of one Synapse server. */
export interface SynapseClient {
  /** Plugins, actions and jobs. */
  actions: Client<typeof ActionService>;
  /** Model artifacts. */
  models: Client<typeof ModelService>;
  /** Ray Serve applications. */
  deployments: Client<typeof DeploymentService>;
  /** Calls to deployed models. */
  inference: Client<typeof InferenceService>;
}

/** An interceptor that adds `authorization: Bearer <token>` to every request. */
export function bearerAuth(token: string): Interceptor {
  if (token === "" || /[\r\n]/.test(token)) {
    throw new TypeError("bearerAuth: the token must be a non-empty single-line string");
  }
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** Node's TLS session options for a TlsConfig (PEM text or bytes, both accepted by Node). */
function tlsOptions(tls: TlsConfig): SecureClientSessionOptions {
  const options: SecureClientSessionOptions = {};
  if (tls.ca !== undefined) options.ca = Buffer.from(tls.ca);
  if (tls.cert !== undefined) options.cert = Buffer.from(tls.cert);
  if (tls.key !== undefined) options.key = Buffer.from(tls.key);
  // Node checks the certificate against `servername` when it is set (and sends it as SNI).
  if (tls.serverName !== undefined) options.servername = tls.serverName;
  return options;
}

/**
 * Clients for the server at `address` (`host:port`, or a full `http(s)://` URL) over gRPC
 * (HTTP/2), with the token attached to every call.
 */
export function createSynapseClient(
  address: string,
  options: SynapseClientOptions = {},
): SynapseClient {
  if (address === "") {
    throw new TypeError("createSynapseClient: address is empty; expected host:port or a URL");
  }
  const tls = options.tls === true ? {} : options.tls || undefined;
  if (tls !== undefined) checkTls(tls);
  const baseUrl = /^https?:\/\//.test(address)
    ? address
    : `${tls !== undefined ? "https" : "http"}://${address}`;
  const interceptors: Interceptor[] = [];
  if (options.token !== undefined) interceptors.push(bearerAuth(options.token));
  interceptors.push(...(options.interceptors ?? []));
  const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  if (!Number.isInteger(maxBytes) || maxBytes <= 0) {
    throw new TypeError("createSynapseClient: maxMessageBytes must be a positive integer");
  }
  const transport = createGrpcTransport({
    baseUrl,
    interceptors,
    readMaxBytes: maxBytes,
    writeMaxBytes: maxBytes,
    ...(tls !== undefined ? { nodeOptions: tlsOptions(tls) } : {}),
  });
  return {
    actions: createClient(ActionService, transport),
    models: createClient(ModelService, transport),
    deployments: createClient(DeploymentService, transport),
    inference: createClient(InferenceService, transport),
  };
}
