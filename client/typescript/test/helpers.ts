// Shared pieces of the end-to-end tests: the server under test (from the environment that
// tools/run-node-e2e sets), error assertions, stream collection and a tiny zip writer.
import assert from "node:assert/strict";
import { crc32 } from "node:zlib";
import { Code, ConnectError } from "@connectrpc/connect";
import { type SynapseClient, createSynapseClient } from "../src/client.js";
import type { JobEvent } from "../src/gen/synapse/plugin/v1/job_event_pb.js";

/** The toy plugin in tests/polyglot/plugins that tools/run-node-e2e serves. */
export const TOY_PLUGIN = "polyglot-toy";

/** Deadline for unary calls; generous for a 2-core CI machine, short enough to not hang. */
export const CALL_TIMEOUT_MS = 15_000;

/** Deadline for following a job to its end. */
export const STREAM_TIMEOUT_MS = 60_000;

function requiredEnv(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    throw new Error(
      `${name} is not set: these tests need a running server; start them with tools/run-node-e2e`,
    );
  }
  return value;
}

/** host:port of the server under test. */
export const address = requiredEnv("SYNAPSE_ADDRESS");

/** A token the server accepts. */
export const token = requiredEnv("SYNAPSE_TOKEN");

/** A token of another tenant, which must not see the first tenant's jobs. */
export const otherTenantToken = requiredEnv("SYNAPSE_OTHER_TOKEN");

/** Clients carrying the test token. */
export function client(): SynapseClient {
  return createSynapseClient(address, { token });
}

/** Clients carrying `tokenOverride`, or no token at all when it is undefined. */
export function clientWithToken(tokenOverride: string | undefined): SynapseClient {
  return createSynapseClient(address, { token: tokenOverride });
}

/** Awaits `call`, asserts it failed with `code`, and returns the error for further checks. */
export async function expectCode(call: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await call;
  } catch (raw) {
    const error = ConnectError.from(raw);
    assert.equal(
      error.code,
      code,
      `expected ${Code[code]}, got ${Code[error.code]}: ${error.rawMessage}`,
    );
    return error;
  }
  assert.fail(`expected the call to fail with ${Code[code]}, but it succeeded`);
}

/** True when the call fails because the server does not serve the RPC (yet). */
export async function isUnimplemented(call: Promise<unknown>): Promise<boolean> {
  try {
    await call;
    return false;
  } catch (raw) {
    const error = ConnectError.from(raw);
    if (error.code === Code.Unimplemented) return true;
    throw error;
  }
}

/** Reads a server stream to its end and returns how many messages it sent. */
export async function drain(stream: AsyncIterable<unknown>): Promise<number> {
  let count = 0;
  for await (const _ of stream) count++;
  return count;
}

/**
 * Follows a job with StreamProgress until the stream ends and returns its events (keepalives
 * left out), checking on the way that each seq is the previous one plus 1.
 */
export async function followJob(
  synapse: SynapseClient,
  jobId: string,
  afterSeq = 0n,
  onEvent?: (event: JobEvent) => Promise<void> | void,
  timeoutMs = STREAM_TIMEOUT_MS,
): Promise<JobEvent[]> {
  const events: JobEvent[] = [];
  let previous = afterSeq;
  for await (const message of synapse.actions.streamProgress(
    { jobId, afterSeq },
    { timeoutMs },
  )) {
    if (message.kind.case !== "event") continue;
    const event = message.kind.value;
    assert.equal(event.jobId, jobId);
    assert.equal(event.seq, previous + 1n, `seq ${event.seq} follows ${previous}`);
    previous = event.seq;
    events.push(event);
    if (onEvent !== undefined) await onEvent(event);
  }
  return events;
}

/** The terminal event, asserting it is present and the last one. */
export function terminalOf(events: JobEvent[]) {
  const last = events.at(-1);
  assert.ok(last !== undefined, "the stream sent no events");
  assert.equal(last.kind.case, "terminal", `last event is ${last.kind.case}, not terminal`);
  const terminals = events.filter((e) => e.kind.case === "terminal");
  assert.equal(terminals.length, 1, "exactly one terminal event");
  return last.kind.value;
}

/** A zip archive (stored, no compression) holding `files`; enough for a model upload. */
export function buildZip(files: Record<string, string | Uint8Array>): Uint8Array {
  const local: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, text] of Object.entries(files)) {
    // Stored entries keep sizes in 32 bits; test archives are far below that.
    const nameBytes = Buffer.from(name, "utf8");
    const data = typeof text === "string" ? Buffer.from(text, "utf8") : Buffer.from(text);
    const crc = crc32(data);
    const header = Buffer.alloc(30);
    header.writeUInt32LE(0x04034b50, 0); // local file header signature
    header.writeUInt16LE(20, 4); // version needed
    header.writeUInt16LE(0x0800, 6); // UTF-8 names
    header.writeUInt16LE(0, 8); // stored
    header.writeUInt32LE(0, 10); // time and date: 1980-00-00
    header.writeUInt32LE(crc, 14);
    header.writeUInt32LE(data.length, 18);
    header.writeUInt32LE(data.length, 22);
    header.writeUInt16LE(nameBytes.length, 26);
    header.writeUInt16LE(0, 28);
    local.push(header, nameBytes, data);
    const entry = Buffer.alloc(46);
    entry.writeUInt32LE(0x02014b50, 0); // central directory signature
    entry.writeUInt16LE(20, 4); // version made by
    entry.writeUInt16LE(20, 6);
    entry.writeUInt16LE(0x0800, 8);
    entry.writeUInt16LE(0, 10);
    entry.writeUInt32LE(0, 12);
    entry.writeUInt32LE(crc, 16);
    entry.writeUInt32LE(data.length, 20);
    entry.writeUInt32LE(data.length, 24);
    entry.writeUInt16LE(nameBytes.length, 28);
    entry.writeUInt32LE(offset, 42);
    central.push(entry, nameBytes);
    offset += header.length + nameBytes.length + data.length;
  }
  const centralSize = central.reduce((sum, b) => sum + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); // end of central directory signature
  end.writeUInt16LE(central.length / 2, 8);
  end.writeUInt16LE(central.length / 2, 10);
  end.writeUInt32LE(centralSize, 12);
  end.writeUInt32LE(offset, 16);
  return new Uint8Array(Buffer.concat([...local, ...central, end]));
}
