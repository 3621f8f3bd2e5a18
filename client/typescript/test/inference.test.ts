// InferenceService end to end: upload the example model, deploy it with the
// torch-serve example plugin's deployment action (Ray Serve), call Infer and compare with the
// outputs the model itself gives (computed by tools/run-node-e2e with torch), then undeploy.
// Skipped, with the reason printed, while the server does not serve DeploymentService and
// InferenceService.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { type JsonValue, fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { DeploymentStatus } from "../src/gen/synapse/plugin/v1/deployment_pb.js";
import { JobState } from "../src/gen/synapse/plugin/v1/job_pb.js";
import { JsonFormat } from "../src/gen/synapse/plugin/v1/inference_service_pb.js";
import { ArchiveFormat } from "../src/gen/synapse/plugin/v1/model_pb.js";
import {
  Client,
  ClientConfigError,
  InvalidArgumentError,
  NotFoundError,
} from "../src/index.js";
import {
  CALL_TIMEOUT_MS,
  address,
  buildZip,
  client,
  token,
  expectCode,
  followJob,
  isUnimplemented,
  terminalOf,
} from "./helpers.js";

const synapse = client();
/** The high-level client, whose infer() takes plain JSON and throws typed errors. */
const high = new Client(address, { token });
const opts = { timeoutMs: CALL_TIMEOUT_MS };
const SERVE_PLUGIN = "torch-serve";

/** A google.protobuf.Value holding `json` (Value fields take messages, not plain JSON). */
const value = (json: JsonValue) => fromJson(ValueSchema, json);

async function skipReason(): Promise<string | false> {
  if (await isUnimplemented(synapse.deployments.listDeployments({ pageSize: 1 }, opts))) {
    return "DeploymentService is not served by this server (UNIMPLEMENTED)";
  }
  try {
    await synapse.inference.infer({}, opts);
  } catch (raw) {
    if ((raw as { code?: Code }).code === Code.Unimplemented) {
      return "InferenceService is not served by this server (UNIMPLEMENTED)";
    }
  }
  return false;
}

const skip = await skipReason();

/** Every item of a server stream; the stream's error, if any, rejects the promise. */
async function drain<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of stream) items.push(item);
  return items;
}

const text = (json: string) => new TextEncoder().encode(json);

test("Infer on an unknown application: NOT_FOUND", { skip }, async () => {
  await expectCode(
    synapse.inference.infer(
      { target: { case: "application", value: `no-such-app-${randomUUID()}` }, json: value({}) },
      opts,
    ),
    Code.NotFound,
  );
  await assert.rejects(
    high.infer({ application: `no-such-app-${randomUUID()}`, json: {} }),
    NotFoundError,
  );
});

test("Client.infer without a target or with an empty one: ClientConfigError", async () => {
  await assert.rejects(high.infer({ json: {} } as never), ClientConfigError);
  await assert.rejects(high.infer({ application: "" }), ClientConfigError);
  await assert.rejects(high.infer({ plugin: "p", action: "" }), ClientConfigError);
});

test("Infer without a target: INVALID_ARGUMENT", { skip }, async () => {
  await expectCode(synapse.inference.infer({ json: value({}) }, opts), Code.InvalidArgument);
});

test("InferStream refuses a bad request with Infer's codes", { skip }, async () => {
  const target = { case: "application" as const, value: `no-such-app-${randomUUID()}` };
  await expectCode(
    drain(synapse.inference.inferStream({ request: { target, jsonText: text("{}") } }, opts)),
    Code.NotFound,
  );
  await expectCode(
    drain(synapse.inference.inferStream({ request: { jsonText: text("{}") } }, opts)),
    Code.InvalidArgument,
  );
  const bad = await expectCode(
    drain(synapse.inference.inferStream({ request: { target, jsonText: text("{nope") } }, opts)),
    Code.InvalidArgument,
  );
  assert.match(bad.rawMessage, /json_text/);
});

test("deploy the example torch model and Infer on it", { skip, timeout: 400_000 }, async () => {
  // tools/run-node-e2e builds the model with examples/models/build.py and records what the
  // model returns for fixed inputs; a missing fixture is a setup error, not a skip.
  const modelDir = process.env.SYNAPSE_E2E_MODEL_DIR;
  const referencePath = process.env.SYNAPSE_E2E_MODEL_REFERENCE;
  assert.ok(modelDir && referencePath, "SYNAPSE_E2E_MODEL_DIR/_REFERENCE are not set");
  const reference = JSON.parse(readFileSync(referencePath, "utf8")) as {
    inputs: number[][];
    outputs: number[][];
  };
  const { plugins } = await synapse.actions.listActions({ plugin: SERVE_PLUGIN }, opts);
  assert.equal(plugins.length, 1, `plugin ${SERVE_PLUGIN} is served`);

  // Every file the build wrote (config.json and the weights, whatever their format).
  const archive = buildZip(
    Object.fromEntries(
      readdirSync(modelDir).map((name) => [name, readFileSync(join(modelDir, name))]),
    ),
  );
  const { model } = await synapse.models.registerModel(
    (async function* () {
      yield {
        kind: {
          case: "info" as const,
          value: { name: `ts-serve-${randomUUID()}`, framework: "torch", archiveFormat: ArchiveFormat.ZIP },
        },
      };
      yield { kind: { case: "chunk" as const, value: archive } };
    })(),
    opts,
  );
  assert.ok(model);

  const { job } = await synapse.actions.runAction(
    { plugin: SERVE_PLUGIN, action: "deployment", params: { model: Number(model.id), num_cpus: 0 } },
    opts,
  );
  assert.ok(job);
  // Starting Ray and Serve on a small CI machine takes a while.
  const terminal = terminalOf(await followJob(synapse, job.id, 0n, undefined, 300_000));
  assert.equal(
    terminal.state,
    JobState.SUCCEEDED,
    `deployment job ended ${JobState[terminal.state]}: ${terminal.error?.type}: ${terminal.error?.message}`,
  );
  const result = JSON.parse(new TextDecoder().decode(terminal.resultJson));
  const deploymentId = BigInt(result.serve_application);
  const deployment = (await synapse.deployments.getDeployment({ deploymentId }, opts)).deployment;
  assert.ok(deployment);
  assert.equal(deployment.status, DeploymentStatus.RUNNING, deployment.statusMessage);
  assert.equal(deployment.plugin, SERVE_PLUGIN);
  assert.equal(deployment.jobId, job.id);

  try {
    const requestId = randomUUID();
    const reply = await synapse.inference.infer(
      {
        target: { case: "application", value: deployment.name },
        modelId: model.id.toString(),
        json: value(reference.inputs.map((data) => ({ data }))),
        method: "post",
        path: "/",
        requestId,
      },
      { timeoutMs: 120_000 },
    );
    assert.equal(reply.requestId, requestId);
    assert.equal(reply.application, deployment.name);
    assert.ok(reply.json, "Infer returns the endpoint's JSON");
    const answer = toJson(ValueSchema, reply.json) as { prediction: number[] }[];
    const predictions = answer.map((r) => r.prediction);
    assert.equal(predictions.length, reference.outputs.length);
    predictions.forEach((row, i) => {
      row.forEach((value, j) => {
        const expected = reference.outputs[i]?.[j] ?? Number.NaN;
        assert.ok(Math.abs(value - expected) < 1e-5, `output[${i}][${j}] ${value} != ${expected}`);
      });
    });

    // JSON text in and out: the answer's numbers are exactly the endpoint's.
    const exact = await synapse.inference.infer(
      {
        target: { case: "application", value: deployment.name },
        modelId: model.id.toString(),
        jsonText: text(JSON.stringify(reference.inputs.map((data) => ({ data })))),
        responseJsonFormat: JsonFormat.TEXT,
      },
      { timeoutMs: 120_000 },
    );
    assert.equal(exact.json, undefined);
    const exactAnswer = JSON.parse(new TextDecoder().decode(exact.jsonText)) as unknown;
    assert.deepEqual(exactAnswer, answer);

    // InferStream on an endpoint that returns: one item, the same answer.
    const streamed = await drain(
      synapse.inference.inferStream(
        {
          request: {
            target: { case: "application", value: deployment.name },
            modelId: model.id.toString(),
            jsonText: text(JSON.stringify(reference.inputs.map((data) => ({ data })))),
          },
        },
        { timeoutMs: 120_000 },
      ),
    );
    assert.equal(streamed.length, 1);
    assert.equal(streamed[0]?.index, 0n);
    const item = streamed[0]?.item;
    assert.ok(item);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(item.jsonText)), answer);

    // The same deployment addressed by plugin and serve entrypoint action.
    const byAction = await synapse.inference.infer(
      {
        target: { case: "action", value: { plugin: SERVE_PLUGIN, action: "inference" } },
        modelId: model.id.toString(),
        json: value([{ data: reference.inputs[0] ?? [] }]),
      },
      { timeoutMs: 120_000 },
    );
    assert.equal(byAction.application, deployment.name);

    // The high-level client: plain JSON in and out, the same answers.
    const viaClient = await high.infer({
      application: deployment.name,
      model: model.id,
      json: reference.inputs.map((data) => ({ data })),
      timeoutMs: 120_000,
    });
    assert.equal(viaClient.application, deployment.name);
    const rows = (viaClient.json as { prediction: number[] }[]).map((r) => r.prediction);
    assert.equal(rows.length, reference.outputs.length);
    rows.forEach((row, i) => {
      row.forEach((value, j) => {
        const expected = reference.outputs[i]?.[j] ?? Number.NaN;
        assert.ok(Math.abs(value - expected) < 1e-5, `output[${i}][${j}] ${value} != ${expected}`);
      });
    });
    const byPlugin = await high.infer({
      plugin: SERVE_PLUGIN,
      action: "inference",
      model: Number(model.id),
      json: [{ data: reference.inputs[0] ?? [] }],
      timeoutMs: 120_000,
    });
    assert.equal(byPlugin.application, deployment.name);
    await assert.rejects(
      high.infer({ application: deployment.name, model: "abc", json: [] }),
      InvalidArgumentError,
    );

    // A model id that is not a number is rejected before reaching the replica.
    await expectCode(
      synapse.inference.infer(
        { target: { case: "application", value: deployment.name }, modelId: "abc", json: value([]) },
        opts,
      ),
      Code.InvalidArgument,
    );
  } finally {
    const deleted = await synapse.deployments.deleteDeployment({ deploymentId }, { timeoutMs: 120_000 });
    assert.ok(
      deleted.deployment?.status === DeploymentStatus.DELETED ||
        deleted.deployment?.status === DeploymentStatus.DELETING,
    );
  }
});
