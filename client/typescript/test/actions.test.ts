// ActionService end to end against a real server: plugins, jobs, progress streams, typed errors
// and bearer-token auth, through the generated client and Connect's gRPC transport.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { createSynapseClient } from "../src/client.js";
import { badRequestViolations, errorInfo } from "../src/errors.js";
import { JobState, JobView, RunMode } from "../src/gen/synapse/plugin/v1/job_pb.js";
import { ActionKind } from "../src/gen/synapse/plugin/v1/plugin_pb.js";
import {
  CALL_TIMEOUT_MS,
  drain,
  TOY_PLUGIN,
  address,
  client,
  clientWithToken,
  otherTenantToken,
  expectCode,
  token,
  followJob,
  terminalOf,
} from "./helpers.js";

const synapse = client();
const opts = { timeoutMs: CALL_TIMEOUT_MS };

describe("ListActions", () => {
  test("lists the toy plugin with its actions and params schemas", async () => {
    const { plugins } = await synapse.actions.listActions({}, opts);
    const toy = plugins.find((p) => p.code === TOY_PLUGIN);
    assert.ok(toy, `plugin ${TOY_PLUGIN} not among ${plugins.map((p) => p.code).join(", ")}`);
    assert.equal(toy.version, "1.0.0");
    assert.equal(toy.category, "custom");
    const count = toy.actions.find((a) => a.name === "count");
    assert.ok(count, "action count is listed");
    assert.equal(count.kind, ActionKind.JOB);
    assert.notEqual(count.defaultMode, RunMode.UNSPECIFIED);
    assert.ok(count.supportedModes.includes(count.defaultMode));
    const schema = JSON.parse(count.paramsSchemaJson);
    assert.equal(schema.properties.n.type, "integer");
    assert.equal(schema.properties.n.minimum, 1);
    assert.equal(schema.properties.n.maximum, 50);
    assert.deepEqual(schema.required, ["n"]);
    assert.ok(toy.actions.some((a) => a.name === "wait"), "action wait is listed");
  });

  test("filters by plugin", async () => {
    const { plugins } = await synapse.actions.listActions({ plugin: TOY_PLUGIN }, opts);
    assert.deepEqual(
      plugins.map((p) => p.code),
      [TOY_PLUGIN],
    );
  });
});

describe("RunAction and StreamProgress", () => {
  test("a quick action streams gap-free events and ends with its result", async () => {
    const { job, created } = await synapse.actions.runAction(
      { plugin: TOY_PLUGIN, action: "count", params: { n: 5, label: "ts" } },
      opts,
    );
    assert.ok(job, "RunAction returns the job");
    assert.equal(created, true);
    assert.equal(job.plugin, TOY_PLUGIN);
    assert.equal(job.action, "count");
    assert.equal(job.state, JobState.PENDING);

    const events = await followJob(synapse, job.id);
    assert.equal(events[0]?.seq, 1n, "the first event is seq 1");
    const first = events[0]?.kind;
    assert.equal(first?.case, "stateChanged");
    assert.equal(first.value.state, JobState.PENDING);
    assert.ok(
      events.some((e) => e.kind.case === "stateChanged" && e.kind.value.state === JobState.RUNNING),
      "the job was RUNNING before it ended",
    );
    // Logs are never coalesced: one per number, in order.
    const counted = events.flatMap((e) =>
      e.kind.case === "log" && e.kind.value.event === "counted" ? [e.kind.value.data?.i] : [],
    );
    assert.deepEqual(counted, [1, 2, 3, 4, 5]);
    // Progress may be coalesced, but the last report (5 of 5) is always kept.
    const progress = events.flatMap((e) => (e.kind.case === "progress" ? [e.kind.value] : []));
    assert.ok(progress.length >= 1, "at least one progress event");
    const lastProgress = progress.at(-1);
    assert.equal(lastProgress?.category, "counting");
    assert.equal(lastProgress?.current, 5n);
    assert.equal(lastProgress?.total, 5n);

    const terminal = terminalOf(events);
    assert.equal(terminal.state, JobState.SUCCEEDED);
    assert.equal(terminal.resultInline, true);
    const result = JSON.parse(new TextDecoder().decode(terminal.resultJson));
    assert.deepEqual(result, { label: "ts", n: 5, sum: 15 });
    assert.equal(terminal.resultSizeBytes, BigInt(terminal.resultJson.length));

    // GetJob agrees with the stream.
    const got = (await synapse.actions.getJob({ jobId: job.id }, opts)).job;
    assert.ok(got);
    assert.equal(got.state, JobState.SUCCEEDED);
    assert.equal(got.lastSeq, events.at(-1)?.seq);
    assert.equal(got.resultSizeBytes, terminal.resultSizeBytes);
    assert.equal(got.progressPercent, 100);
    assert.deepEqual(got.params, { n: 5, label: "ts" });

    // A finished job replays the same history; after_seq resumes exactly after that event.
    const replay = await followJob(synapse, job.id);
    assert.deepEqual(
      replay.map((e) => [e.seq, e.kind.case]),
      events.map((e) => [e.seq, e.kind.case]),
    );
    const cut = events[2]?.seq ?? 1n;
    const resumed = await followJob(synapse, job.id, cut);
    assert.deepEqual(
      resumed.map((e) => e.seq),
      events.filter((e) => e.seq > cut).map((e) => e.seq),
    );

    // GetJobResult streams the same JSON.
    let text = "";
    for await (const chunk of synapse.actions.getJobResult({ jobId: job.id }, opts)) {
      assert.equal(chunk.offset, BigInt(Buffer.byteLength(text)));
      text += new TextDecoder().decode(chunk.data);
    }
    assert.deepEqual(JSON.parse(text), result);
  });

  test("params as JSON text (params_json); GetJob's BASIC view leaves the params out", async () => {
    const paramsJson = new TextEncoder().encode(JSON.stringify({ n: 4, label: "json" }));
    const { job } = await synapse.actions.runAction(
      { plugin: TOY_PLUGIN, action: "count", paramsJson },
      opts,
    );
    assert.ok(job);
    assert.equal(job.params, undefined, "RunAction answers without the params");
    const terminal = terminalOf(await followJob(synapse, job.id));
    assert.deepEqual(JSON.parse(new TextDecoder().decode(terminal.resultJson)), {
      label: "json",
      n: 4,
      sum: 10,
    });
    const full = (await synapse.actions.getJob({ jobId: job.id }, opts)).job;
    assert.deepEqual(full?.params, { n: 4, label: "json" });
    const basic = (await synapse.actions.getJob({ jobId: job.id, view: JobView.BASIC }, opts)).job;
    assert.equal(basic?.params, undefined);
    assert.equal(basic?.paramsJson.length, 0);
    assert.equal(basic?.state, JobState.SUCCEEDED);
  });

  test("a request_id makes RunAction idempotent", async () => {
    const requestId = randomUUID();
    const request = { plugin: TOY_PLUGIN, action: "count", params: { n: 1 }, requestId };
    const first = await synapse.actions.runAction(request, opts);
    const again = await synapse.actions.runAction(request, opts);
    assert.equal(first.created, true);
    assert.equal(again.created, false);
    assert.equal(again.job?.id, first.job?.id);
    await expectCode(
      synapse.actions.runAction({ ...request, params: { n: 2 } }, opts),
      Code.AlreadyExists,
    );
    terminalOf(await followJob(synapse, first.job?.id ?? ""));
  });

  test("ListJobs finds the jobs of a plugin, newest first", async () => {
    const a = (await synapse.actions.runAction({ plugin: TOY_PLUGIN, action: "count", params: { n: 1 } }, opts)).job;
    const b = (await synapse.actions.runAction({ plugin: TOY_PLUGIN, action: "count", params: { n: 1 } }, opts)).job;
    assert.ok(a && b);
    const { jobs } = await synapse.actions.listJobs(
      { plugin: TOY_PLUGIN, action: "count", pageSize: 1000 },
      opts,
    );
    const ids = jobs.map((j) => j.id);
    assert.ok(ids.includes(a.id) && ids.includes(b.id));
    assert.ok(ids.indexOf(b.id) < ids.indexOf(a.id), "newest first");
    assert.ok(jobs.every((j) => j.plugin === TOY_PLUGIN && j.action === "count"));
    await followJob(synapse, a.id);
    await followJob(synapse, b.id);
  });
});

describe("ListJobs paging", () => {
  test("page_size 1 walks the jobs one page at a time without repeats", async () => {
    for (let i = 0; i < 3; i++) {
      const { job } = await synapse.actions.runAction(
        { plugin: TOY_PLUGIN, action: "count", params: { n: 1, label: "page" } },
        opts,
      );
      await followJob(synapse, job?.id ?? "");
    }
    const seen: string[] = [];
    let pageToken = "";
    for (let page = 0; page < 3; page++) {
      const reply = await synapse.actions.listJobs({ plugin: TOY_PLUGIN, pageSize: 1, pageToken }, opts);
      assert.equal(reply.jobs.length, 1);
      assert.notEqual(reply.nextPageToken, "", "more pages follow");
      seen.push(reply.jobs[0]?.id ?? "");
      pageToken = reply.nextPageToken;
    }
    assert.equal(new Set(seen).size, 3, "each page holds a different job");
  });

  test("a page_size over 1000 or a garbage page_token: INVALID_ARGUMENT", async () => {
    await expectCode(synapse.actions.listJobs({ pageSize: 1001 }, opts), Code.InvalidArgument);
    await expectCode(
      synapse.actions.listJobs({ pageToken: "not-a-token" }, opts),
      Code.InvalidArgument,
    );
  });
});

describe("CancelJob", () => {
  test("cancelling a running job ends it CANCELLED with the reason", async () => {
    const { job } = await synapse.actions.runAction(
      { plugin: TOY_PLUGIN, action: "wait", params: { max_seconds: 60 } },
      opts,
    );
    assert.ok(job);
    let cancelled = false;
    const events = await followJob(synapse, job.id, 0n, async (event) => {
      // Cancel once the action's code is running (it logs "waiting" first thing).
      if (!cancelled && event.kind.case === "log" && event.kind.value.event === "waiting") {
        cancelled = true;
        // replay_only ends after the stored events although the job is still running.
        const stored: bigint[] = [];
        for await (const message of synapse.actions.streamProgress(
          { jobId: job.id, replayOnly: true },
          opts,
        )) {
          if (message.kind.case === "event") stored.push(message.kind.value.seq);
        }
        assert.ok(stored.length >= event.seq, "replay_only sent the stored events");
        assert.deepEqual(
          stored,
          stored.map((_, i) => BigInt(i + 1)),
        );
        await expectCode(
          drain(synapse.actions.getJobResult({ jobId: job.id }, opts)),
          Code.FailedPrecondition,
        );
        const reply = await synapse.actions.cancelJob(
          { jobId: job.id, reason: "stopped by the polyglot test" },
          opts,
        );
        assert.equal(reply.job?.id, job.id);
        assert.ok(
          reply.job?.cancelRequested || reply.job?.state === JobState.CANCELLED,
          "the cancel was recorded",
        );
      }
    });
    assert.ok(cancelled, "the job logged 'waiting' before it ended");
    const terminal = terminalOf(events);
    assert.equal(terminal.state, JobState.CANCELLED);
    assert.match(terminal.reason, /stopped by the polyglot test/);

    const got = (await synapse.actions.getJob({ jobId: job.id }, opts)).job;
    assert.equal(got?.state, JobState.CANCELLED);
    // Cancelling a finished job changes nothing.
    const again = (await synapse.actions.cancelJob({ jobId: job.id, reason: "again" }, opts)).job;
    assert.equal(again?.state, JobState.CANCELLED);
    assert.equal(again?.lastSeq, got?.lastSeq);
    // A cancelled job has no result.
    await expectCode(
      drain(synapse.actions.getJobResult({ jobId: job.id }, opts)),
      Code.FailedPrecondition,
    );
  });
});

describe("errors", () => {
  test("params that fail the schema: INVALID_ARGUMENT with a BadRequest field violation", async () => {
    const error = await expectCode(
      synapse.actions.runAction({ plugin: TOY_PLUGIN, action: "count", params: { n: 0 } }, opts),
      Code.InvalidArgument,
    );
    const violations = badRequestViolations(error);
    assert.ok(
      violations.some((v) => v.field === "params.n" && v.description !== ""),
      `violations: ${JSON.stringify(violations)}`,
    );
  });

  test("a missing required param names the field", async () => {
    const error = await expectCode(
      synapse.actions.runAction({ plugin: TOY_PLUGIN, action: "count", params: {} }, opts),
      Code.InvalidArgument,
    );
    const fields = badRequestViolations(error).map((v) => v.field);
    assert.ok(fields.includes("params.n"), `fields: ${fields.join(", ")}`);
  });

  test("an unknown plugin or action: NOT_FOUND", async () => {
    const plugin = await expectCode(
      synapse.actions.runAction({ plugin: "no-such-plugin", action: "count" }, opts),
      Code.NotFound,
    );
    assert.match(plugin.rawMessage, /no-such-plugin/);
    const info = errorInfo(plugin);
    if (info !== undefined) assert.equal(info.domain, "synapse.plugin.v1");
    await expectCode(
      synapse.actions.runAction({ plugin: TOY_PLUGIN, action: "no-such-action" }, opts),
      Code.NotFound,
    );
  });

  test("a missing plugin name: INVALID_ARGUMENT naming the field", async () => {
    const error = await expectCode(
      synapse.actions.runAction({ plugin: "", action: "count" }, opts),
      Code.InvalidArgument,
    );
    const fields = badRequestViolations(error).map((v) => v.field);
    assert.ok(fields.includes("plugin"), `fields: ${fields.join(", ")}`);
  });

  test("an unknown job id: NOT_FOUND from GetJob, CancelJob and StreamProgress", async () => {
    const jobId = randomUUID();
    await expectCode(synapse.actions.getJob({ jobId }, opts), Code.NotFound);
    await expectCode(synapse.actions.cancelJob({ jobId }, opts), Code.NotFound);
    await expectCode(followJob(synapse, jobId), Code.NotFound);
  });
});

describe("bad input", () => {
  test("an over-long job id: INVALID_ARGUMENT naming the field, with a short message", async () => {
    const jobId = "x".repeat(10_000);
    const error = await expectCode(synapse.actions.getJob({ jobId }, opts), Code.InvalidArgument);
    assert.ok(error.rawMessage.length < 1024, `message of ${error.rawMessage.length} chars`);
    assert.deepEqual(
      badRequestViolations(error).map((v) => v.field),
      ["job_id"],
    );
  });

  test("a request over its RPC's size limit: RESOURCE_EXHAUSTED naming the limit", async () => {
    // GetJob requests are at most 64 KiB on the server; the client's own limit is 64 MiB.
    const error = await expectCode(
      synapse.actions.getJob({ jobId: "x".repeat(100_000) }, opts),
      Code.ResourceExhausted,
    );
    assert.match(error.rawMessage, /65536 bytes/);
  });

  test("a message over the client's maxMessageBytes fails before it is sent", async () => {
    const small = createSynapseClient(address, { token, maxMessageBytes: 1024 });
    await expectCode(
      small.actions.runAction(
        { plugin: TOY_PLUGIN, action: "count", paramsJson: new Uint8Array(4096) },
        opts,
      ),
      Code.ResourceExhausted,
    );
  });
});

describe("authentication", () => {
  test("a call without a token: UNAUTHENTICATED", async () => {
    await expectCode(clientWithToken(undefined).actions.listActions({}, opts), Code.Unauthenticated);
  });

  test("a call with an unknown token: UNAUTHENTICATED", async () => {
    await expectCode(
      clientWithToken("not-a-valid-token").actions.listActions({}, opts),
      Code.Unauthenticated,
    );
  });
});

describe("tenants", () => {
  test("another tenant's job id answers NOT_FOUND and its jobs are not listed", async () => {
    const { job } = await synapse.actions.runAction(
      { plugin: TOY_PLUGIN, action: "count", params: { n: 1 } },
      opts,
    );
    assert.ok(job);
    const other = clientWithToken(otherTenantToken);
    await expectCode(other.actions.getJob({ jobId: job.id }, opts), Code.NotFound);
    await expectCode(other.actions.cancelJob({ jobId: job.id }, opts), Code.NotFound);
    const { jobs } = await other.actions.listJobs({ pageSize: 1000 }, opts);
    assert.ok(!jobs.some((j) => j.id === job.id), "the other tenant does not list the job");
    terminalOf(await followJob(synapse, job.id));
  });
});
