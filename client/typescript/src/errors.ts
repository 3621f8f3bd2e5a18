// The client's errors: decoders for the google.rpc error details the server attaches to failed
// calls (in the grpc-status-details-bin trailer), and the typed errors of the high-level Client.
// Connect hands the details over as raw bytes with their type name; the two message types are
// small and stable, so they are decoded here by field number instead of shipping Google's
// protos with the client.
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

/** One bad request field (`google.rpc.BadRequest.FieldViolation`). */
export interface FieldViolation {
  /** Path of the bad field in the request, e.g. `params.n` or `inputs[0].data`. */
  field: string;
  /** What is wrong with it. */
  description: string;
  /** Machine-readable reason, when the server sets one. */
  reason: string;
}

/** `google.rpc.ErrorInfo`: a stable machine code for the error. */
export interface ErrorInfo {
  /** Upper-snake code, e.g. `PLUGIN_NOT_FOUND`. */
  reason: string;
  /** The error's domain; `synapse.plugin.v1` for this server. */
  domain: string;
  /** Extra key/value context, e.g. `correlation_id` for INTERNAL errors. */
  metadata: Record<string, string>;
}

const BAD_REQUEST = "google.rpc.BadRequest";
const ERROR_INFO = "google.rpc.ErrorInfo";

function rawDetails(error: ConnectError, typeName: string): Uint8Array[] {
  const found: Uint8Array[] = [];
  for (const detail of error.details) {
    if ("type" in detail && detail.type === typeName) found.push(detail.value);
  }
  return found;
}

function decodeFieldViolation(bytes: Uint8Array): FieldViolation {
  const reader = new BinaryReader(bytes);
  const violation: FieldViolation = { field: "", description: "", reason: "" };
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no === 1 && wireType === WireType.LengthDelimited) violation.field = reader.string();
    else if (no === 2 && wireType === WireType.LengthDelimited)
      violation.description = reader.string();
    else if (no === 3 && wireType === WireType.LengthDelimited) violation.reason = reader.string();
    else reader.skip(wireType, no);
  }
  return violation;
}

/** Every field violation of the error's `google.rpc.BadRequest` details (empty if none). */
export function badRequestViolations(error: ConnectError): FieldViolation[] {
  const violations: FieldViolation[] = [];
  for (const bytes of rawDetails(error, BAD_REQUEST)) {
    const reader = new BinaryReader(bytes);
    while (reader.pos < reader.len) {
      const [no, wireType] = reader.tag();
      if (no === 1 && wireType === WireType.LengthDelimited) {
        violations.push(decodeFieldViolation(reader.bytes()));
      } else {
        reader.skip(wireType, no);
      }
    }
  }
  return violations;
}

function decodeMapEntry(bytes: Uint8Array): [string, string] {
  const reader = new BinaryReader(bytes);
  let key = "";
  let value = "";
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no === 1 && wireType === WireType.LengthDelimited) key = reader.string();
    else if (no === 2 && wireType === WireType.LengthDelimited) value = reader.string();
    else reader.skip(wireType, no);
  }
  return [key, value];
}

/** The error's `google.rpc.ErrorInfo` detail, or undefined when it has none. */
export function errorInfo(error: ConnectError): ErrorInfo | undefined {
  const [bytes] = rawDetails(error, ERROR_INFO);
  if (bytes === undefined) return undefined;
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no === 1 && wireType === WireType.LengthDelimited) info.reason = reader.string();
    else if (no === 2 && wireType === WireType.LengthDelimited) info.domain = reader.string();
    else if (no === 3 && wireType === WireType.LengthDelimited) {
      const [key, value] = decodeMapEntry(reader.bytes());
      info.metadata[key] = value;
    } else reader.skip(wireType, no);
  }
  return info;
}

// --- Typed errors -------------------------------------------------------------------------------
// Every failure of the high-level Client is a SynapseError; a failed call is the RpcError
// subclass of its gRPC status code (the table below), so callers catch `NotFoundError` instead
// of comparing codes. fromConnectError is the one place that converts Connect's errors.

/** Base of every error the high-level Client throws. */
export class SynapseError extends Error {
  override name = "SynapseError";
}

/** The client was configured or called with arguments it cannot use. */
export class ClientConfigError extends SynapseError {
  override name = "ClientConfigError";
}

/** The server answered something the wire contract rules out (a result chunk out of order...). */
export class ProtocolError extends SynapseError {
  override name = "ProtocolError";
}

/** The error a FAILED job reports: the plugin's exception type, message, step and traceback. */
export interface JobErrorDetails {
  type: string;
  message: string;
  step: string;
  pluginTraceback: string;
  correlationId: string;
}

/** `JobHandle.result()` found the job FAILED; `error` says why. */
export class JobFailedError extends SynapseError {
  override name = "JobFailedError";
  constructor(
    readonly jobId: string,
    readonly error: JobErrorDetails,
  ) {
    const where = error.step ? ` in step ${JSON.stringify(error.step)}` : "";
    super(`job ${jobId} failed${where}: ${error.type}: ${error.message}`);
  }
}

/** `JobHandle.result()` found the job CANCELLED. */
export class JobCancelledError extends SynapseError {
  override name = "JobCancelledError";
  constructor(
    readonly jobId: string,
    readonly reason = "",
  ) {
    super(`job ${jobId} was cancelled${reason ? `: ${reason}` : ""}`);
  }
}

/** `JobHandle.result({ timeoutMs })` ran out of time; the job itself keeps running. */
export class JobTimeoutError extends SynapseError {
  override name = "JobTimeoutError";
  constructor(
    readonly jobId: string,
    readonly timeoutMs: number,
  ) {
    super(`job ${jobId} did not finish within ${timeoutMs} ms`);
  }
}

/** A call ended with a non-OK gRPC status; subclasses name the code. */
export class RpcError extends SynapseError {
  override name = "RpcError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The server's message, without the code prefix. */
  readonly rawMessage: string;
  /** Field violations of the error's `google.rpc.BadRequest` details (empty if none). */
  readonly fieldViolations: FieldViolation[];
  /** `google.rpc.ErrorInfo.reason`: a stable machine code, when the server sent one. */
  readonly reason: string | undefined;
  /** The server's id for this failure, to quote when asking an operator to look it up. */
  readonly correlationId: string | undefined;

  /** `error`: the failed call; `explanation`: what it most likely means, put first. */
  constructor(error: ConnectError, explanation?: string) {
    const info = errorInfo(error);
    const correlationId =
      info?.metadata.correlation_id || error.metadata.get("x-correlation-id") || undefined;
    super(
      `${explanation ? `${explanation} (` : ""}${Code[error.code] ?? error.code}: ${error.rawMessage}` +
        (explanation ? ")" : "") +
        (correlationId ? ` (correlation id ${correlationId})` : ""),
      { cause: error },
    );
    this.code = error.code;
    this.rawMessage = error.rawMessage;
    this.fieldViolations = badRequestViolations(error);
    this.reason = info?.reason || undefined;
    this.correlationId = correlationId;
  }

  /** Whether the same request may succeed when sent again (the client retries these itself). */
  get retryable(): boolean {
    return false;
  }
}

export class RequestCancelledError extends RpcError {
  override name = "RequestCancelledError";
}
export class UnknownError extends RpcError {
  override name = "UnknownError";
}
/** The request was rejected; `fieldViolations` says which fields and why. */
export class InvalidArgumentError extends RpcError {
  override name = "InvalidArgumentError";
}
export class DeadlineExceededError extends RpcError {
  override name = "DeadlineExceededError";
}
export class NotFoundError extends RpcError {
  override name = "NotFoundError";
}
export class AlreadyExistsError extends RpcError {
  override name = "AlreadyExistsError";
}
export class PermissionDeniedError extends RpcError {
  override name = "PermissionDeniedError";
}
export class ResourceExhaustedError extends RpcError {
  override name = "ResourceExhaustedError";
}
export class FailedPreconditionError extends RpcError {
  override name = "FailedPreconditionError";
}
export class AbortedError extends RpcError {
  override name = "AbortedError";
}
export class OutOfRangeError extends RpcError {
  override name = "OutOfRangeError";
}
export class UnimplementedError extends RpcError {
  override name = "UnimplementedError";
}
export class InternalError extends RpcError {
  override name = "InternalError";
}
/** The server could not be reached or is shutting down; retried by the client first. */
export class UnavailableError extends RpcError {
  override name = "UnavailableError";
  override get retryable(): boolean {
    return true;
  }
}
/**
 * The connection failed its TLS set-up: the server's certificate is not trusted or not for
 * this host, the server wants a client certificate, or one side speaks TLS and the other does
 * not. Never retried: the same settings fail the same way.
 */
export class TransportSecurityError extends UnavailableError {
  override name = "TransportSecurityError";
  override get retryable(): boolean {
    return false;
  }
}
export class DataLossError extends RpcError {
  override name = "DataLossError";
}
export class UnauthenticatedError extends RpcError {
  override name = "UnauthenticatedError";
}

/** The RpcError subclass for each gRPC status code. */
export const STATUS_TO_ERROR: Readonly<
  Record<number, new (error: ConnectError, explanation?: string) => RpcError>
> = {
  [Code.Canceled]: RequestCancelledError,
  [Code.Unknown]: UnknownError,
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.NotFound]: NotFoundError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.Aborted]: AbortedError,
  [Code.OutOfRange]: OutOfRangeError,
  [Code.Unimplemented]: UnimplementedError,
  [Code.Internal]: InternalError,
  [Code.Unavailable]: UnavailableError,
  [Code.DataLoss]: DataLossError,
  [Code.Unauthenticated]: UnauthenticatedError,
};

// Node's TLS errors: certificate verification codes (OpenSSL's names), ERR_TLS_* (host name
// mismatch...) and ERR_SSL_* (an alert from the server, plain text where TLS was expected).
const TLS_ERROR_CODE =
  /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|SELF_SIGNED_|DEPTH_ZERO_|CERT_|HOSTNAME_MISMATCH)/;

function tlsCauseCode(error: unknown): string | undefined {
  for (let cause = error, depth = 0; cause instanceof Error && depth < 8; depth++) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (typeof code === "string" && TLS_ERROR_CODE.test(code)) return code;
    cause = cause.cause;
  }
  return undefined;
}

/** How the client connects, to explain a connection the server closed during set-up. */
export interface ChannelSecurity {
  tls: boolean;
  clientCertificate: boolean;
  /**
   * No call has succeeded on this client yet: a connection closed before any answer is then
   * most likely refused at its set-up rather than dropped later.
   */
  untested: boolean;
}

// What Node reports when the server closes the connection right after it opened, before any
// answer: a grpc server does so to a plain-text client on a TLS port, and (TLS 1.3) after the
// handshake to a client without an acceptable certificate, with no TLS alert Node surfaces.
const CLOSED_AT_SET_UP = /stream closed with error code CANCEL/;

function transportSecurityProblem(
  error: ConnectError,
  security: ChannelSecurity | undefined,
): string | undefined {
  const code = tlsCauseCode(error);
  if (code !== undefined) {
    if (/^ERR_SSL_(WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST)/.test(code)) {
      return "TLS set-up failed: the server does not speak TLS on this port (connect without tls)";
    }
    if (/ALTNAME|HOSTNAME/.test(code)) {
      return "TLS set-up failed: the server's certificate is not for this host name (see tls.serverName)";
    }
    if (/CERTIFICATE_REQUIRED|ALERT_(BAD|UNKNOWN)_(CERTIFICATE|CA)/.test(code)) {
      return "TLS set-up failed: the server did not accept the client certificate (mutual TLS)";
    }
    return `TLS set-up failed: the server's certificate is not trusted (${code}; see tls.ca)`;
  }
  if (
    security?.untested &&
    error.code === Code.Canceled &&
    CLOSED_AT_SET_UP.test(error.rawMessage)
  ) {
    if (!security.tls) {
      return "the server closed the connection at once: it most likely wants TLS (set tls)";
    }
    return security.clientCertificate
      ? "the server closed the TLS connection at once: it most likely does not trust the client certificate"
      : "the server closed the TLS connection at once: it most likely wants a client certificate (mutual TLS: set tls.cert and tls.key)";
  }
  return undefined;
}

/**
 * The typed error for anything a call threw: RpcError subclasses for gRPC statuses, a failed
 * TLS set-up as TransportSecurityError saying what the server most likely wants, SynapseErrors
 * unchanged. `security` (how the client connects) lets a connection the server closed at its
 * set-up be explained; without it only Node's own TLS errors are recognised.
 */
export function fromConnectError(raw: unknown, security?: ChannelSecurity): SynapseError {
  if (raw instanceof SynapseError) return raw;
  const error = ConnectError.from(raw);
  const problem = transportSecurityProblem(error, security);
  if (problem !== undefined) return new TransportSecurityError(error, problem);
  const type = STATUS_TO_ERROR[error.code] ?? UnknownError;
  return new type(error);
}
