// The high-level Client end to end against the real server tools/run-node-e2e starts: run an
// action and follow its progress, wait for the result (inline and streamed), the typed errors
// of failed, cancelled and timed-out jobs and of failed calls, Client.fromEnv and the address
// rules shared with the Python client.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import {
  Client,
  ClientConfigError,
  InvalidArgumentError,
  JobCancelledError,
  JobFailedError,
  JobState,
  JobTimeoutError,
  NotFoundError,
  RpcError,
  SynapseError,
  UnauthenticatedError,
  UnavailableError,
  normalizeAddress,
} from "../src/index.js";
import { TOY_PLUGIN, address, otherTenantToken, token } from "./helpers.js";

/** The shared test plugin (tests/plugins/toy) with its failing and large-result actions. */
const PLATFORM_TOY = "toy";

const synapse = new Client(address, { token });

/** Runs `call`, asserts it throws an instance of `type`, and returns the error. */
async function expectError<T extends Error>(
  call: Promise<unknown>,
  type: abstract new (...args: never[]) => T,
): Promise<T> {
  try {
    await call;
  } catch (error) {
    assert.ok(
      error instanceof type,
      `expected ${type.name}, got ${(error as Error)?.constructor?.name}: ${(error as Error)?.message}`,
    );
    return error;
  }
  assert.fail(`expected ${type.name}, but the call succeeded`);
}

describe("Client: run an action, follow its progress, wait for the result", () => {
  test("progress reports arrive in order and result() returns the parsed result", async () => {
    const job = await synapse.runAction(TOY_PLUGIN, "count", { n: 6, label: "high" });
    assert.equal(job.created, true);
    assert.ok(job.job !== undefined && job.job.id === job.id);
    const reports = [];
    for await (const report of job.progress()) reports.push(report);
    // Progress may be coalesced, but never reordered, and the last report is always kept.
    assert.ok(reports.length >= 1);
    const currents = reports.map((r) => r.current);
    assert.deepEqual(
      currents,
      [...currents].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
    );
    assert.equal(reports.at(-1)?.current, 6n);
    assert.equal(reports.at(-1)?.total, 6n);
    assert.deepEqual(await job.result({ timeoutMs: 60_000 }), { label: "high", n: 6, sum: 21 });
    assert.equal((await job.refresh()).state, JobState.SUCCEEDED);
  });

  test("events() delivers every seq once and resumes after a saved seq", async () => {
    const job = await synapse.runAction(TOY_PLUGIN, "count", { n: 3 });
    const seqs: bigint[] = [];
    let last: string | undefined;
    for await (const event of job.events()) {
      seqs.push(event.seq);
      last = event.kind.case;
    }
    assert.equal(last, "terminal");
    assert.deepEqual(
      seqs,
      seqs.map((_, i) => BigInt(i + 1)),
    );
    const resumed = [];
    for await (const event of synapse.job(job.id).events({ afterSeq: 2n })) resumed.push(event.seq);
    assert.deepEqual(resumed, seqs.slice(2));
    const stored = [];
    for await (const event of job.events({ follow: false })) stored.push(event.seq);
    assert.deepEqual(stored, seqs);
  });

  test("the same requestId returns the job the first call created", async () => {
    const requestId = randomUUID();
    const first = await synapse.runAction(TOY_PLUGIN, "count", { n: 1 }, { requestId });
    const again = await synapse.runAction(TOY_PLUGIN, "count", { n: 1 }, { requestId });
    assert.equal(again.id, first.id);
    assert.equal(again.created, false);
    await first.result({ timeoutMs: 60_000 });
  });

  test("a result above the inline limit is streamed with GetJobResult", async () => {
    // Over the server's default inline limit (1 MiB).
    const big = 1_500_000;
    const job = await synapse.runAction(PLATFORM_TOY, "quick", { count: 1, label: "big", big });
    const result = (await job.result({ timeoutMs: 60_000 })) as { blob: string; label: string };
    assert.equal(result.label, "big");
    assert.equal(result.blob.length, big);
    // A second call returns the same value without asking the server again.
    assert.equal(await job.result(), result);
  });

  test("a failed job: JobFailedError with the plugin's error type and message", async () => {
    const job = await synapse.runAction(PLATFORM_TOY, "fail");
    const error = await expectError(job.result({ timeoutMs: 60_000 }), JobFailedError);
    assert.equal(error.jobId, job.id);
    assert.match(error.error.type, /ValueError/);
    assert.equal(error.error.message, "toy failure");
    assert.match(error.error.pluginTraceback, /toy failure/);
    assert.ok(error instanceof SynapseError);
  });

  test("a cancelled job: JobCancelledError with the reason", async () => {
    const job = await synapse.runAction(TOY_PLUGIN, "wait", { max_seconds: 60 });
    const cancelled = await job.cancel("no longer needed");
    assert.equal(cancelled.id, job.id);
    const error = await expectError(job.result({ timeoutMs: 60_000 }), JobCancelledError);
    assert.equal(error.jobId, job.id);
    assert.match(error.message, /cancelled/);
  });

  test("a result that does not come in time: JobTimeoutError, the job keeps running", async () => {
    const job = await synapse.runAction(TOY_PLUGIN, "wait", { max_seconds: 60 });
    try {
      const error = await expectError(job.result({ timeoutMs: 300 }), JobTimeoutError);
      assert.equal(error.jobId, job.id);
      assert.equal(error.timeoutMs, 300);
      const state = (await job.refresh()).state;
      assert.ok(state === JobState.PENDING || state === JobState.RUNNING, JobState[state]);
    } finally {
      await job.cancel("test over");
    }
  });
});

describe("Client: typed errors of failed calls", () => {
  test("bad params: InvalidArgumentError naming the field", async () => {
    const error = await expectError(
      synapse.runAction(TOY_PLUGIN, "count", { n: 500 }),
      InvalidArgumentError,
    );
    assert.ok(
      error.fieldViolations.some((v) => v.field.includes("n")),
      JSON.stringify(error.fieldViolations),
    );
    assert.ok(error instanceof RpcError);
    assert.match(error.message, /^InvalidArgument: /);
  });

  test("an unknown plugin and an unknown job: NotFoundError", async () => {
    await expectError(synapse.runAction(`no-such-plugin-${randomUUID()}`, "x"), NotFoundError);
    await expectError(synapse.getJob(randomUUID()), NotFoundError);
    await expectError(synapse.job(randomUUID()).result({ timeoutMs: 30_000 }), NotFoundError);
  });

  test("another tenant's job is not found", async () => {
    const job = await synapse.runAction(TOY_PLUGIN, "count", { n: 1 });
    await job.result({ timeoutMs: 60_000 });
    const other = new Client(address, { token: otherTenantToken });
    await expectError(other.getJob(job.id), NotFoundError);
  });

  test("a wrong token: UnauthenticatedError", async () => {
    const stranger = new Client(address, { token: `wrong-${randomUUID()}` });
    await expectError(stranger.listActions(), UnauthenticatedError);
  });

  test("a server that is not there: UnavailableError after the retries", async () => {
    // Port 1 on loopback refuses connections at once.
    const nowhere = new Client("127.0.0.1:1", {
      token,
      retry: { maxAttempts: 2, initialBackoffMs: 1 },
    });
    const error = await expectError(nowhere.listActions(), UnavailableError);
    assert.equal(error.retryable, true);
  });

  test("arguments the client cannot send: ClientConfigError before any call", async () => {
    await expectError(synapse.runAction("", "count"), ClientConfigError);
    await expectError(
      synapse.runAction(TOY_PLUGIN, "count", { n: 1 }, { requestId: "x".repeat(129) }),
      ClientConfigError,
    );
    await expectError(
      synapse.runAction(TOY_PLUGIN, "count", { n: 1n } as Record<string, unknown>),
      ClientConfigError,
    );
    assert.throws(() => new Client(address, { token: "a\nb" }), ClientConfigError);
    assert.throws(
      () => new Client(address, { tls: { cert: "pem-only-without-key" } }),
      ClientConfigError,
    );
  });
});

describe("Client.fromEnv and addresses", () => {
  test("SYNAPSE_SERVER and SYNAPSE_TOKEN configure a working client", async () => {
    const fromEnv = Client.fromEnv({ SYNAPSE_SERVER: address, SYNAPSE_TOKEN: token });
    const plugins = await fromEnv.listActions(TOY_PLUGIN);
    assert.deepEqual(
      plugins.map((p) => p.code),
      [TOY_PLUGIN],
    );
    // Without the token the server refuses the call.
    const anonymous = Client.fromEnv({ SYNAPSE_SERVER: address, SYNAPSE_TOKEN: "" });
    await expectError(anonymous.listActions(), UnauthenticatedError);
  });

  test("a missing or malformed variable is named", () => {
    assert.throws(() => Client.fromEnv({}), /SYNAPSE_SERVER/);
    assert.throws(
      () => Client.fromEnv({ SYNAPSE_SERVER: address, SYNAPSE_TLS: "maybe" }),
      (error: Error) => error instanceof ClientConfigError && /SYNAPSE_TLS/.test(error.message),
    );
    assert.throws(
      () => Client.fromEnv({ SYNAPSE_SERVER: address, SYNAPSE_TLS_CA: "/no/such/ca.pem" }),
      (error: Error) => error instanceof ClientConfigError && /\/no\/such\/ca\.pem/.test(error.message),
    );
  });

  test("addresses follow the Python client's rules", () => {
    assert.equal(normalizeAddress("localhost"), "localhost:50051");
    assert.equal(normalizeAddress(" example.org:7000 "), "example.org:7000");
    assert.equal(normalizeAddress("::1"), "[::1]:50051");
    assert.equal(normalizeAddress("[::1]"), "[::1]:50051");
    assert.equal(normalizeAddress("[::1]:8443"), "[::1]:8443");
    assert.throws(() => normalizeAddress("http://localhost:50051"), /drop the scheme/);
    assert.throws(() => normalizeAddress("https://host:1"), /connect with TLS/);
    assert.throws(() => normalizeAddress("host:0"), /port must be a number/);
    assert.throws(() => normalizeAddress("host:http"), /port must be a number/);
    assert.throws(() => normalizeAddress(":50051"), /no valid host/);
    assert.throws(() => normalizeAddress(""), ClientConfigError);
    // A long address is cut in the message, not echoed whole.
    const long = `${"h".repeat(10_000)}:x`;
    assert.throws(
      () => normalizeAddress(long),
      (error: Error) => error.message.length < 400,
    );
  });
});
