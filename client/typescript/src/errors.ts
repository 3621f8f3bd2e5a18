// Decoders for the google.rpc error details the server attaches to failed calls (in the
// grpc-status-details-bin trailer). Connect hands them over as raw bytes with their type
// name; the two message types are small and stable, so they are decoded here by field number
// instead of shipping Google's protos with the client.
import { ConnectError } from "@connectrpc/connect";
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
