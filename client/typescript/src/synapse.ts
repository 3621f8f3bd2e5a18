// The high-level client, the TypeScript counterpart of the Python `synapse_client.Client`:
// run an action and follow its progress, wait for its result with typed errors, infer. Calls
// go through the generated service clients (createSynapseClient); every failure is turned into
// a SynapseError by fromConnectError, and calls that are safe to repeat are retried with
// backoff when the server is UNAVAILABLE.
import { randomUUID } from "node:crypto";
import { type JsonValue, fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { CallOptions, Interceptor } from "@connectrpc/connect";
import { DEFAULT_MAX_MESSAGE_BYTES, type SynapseClient, createSynapseClient } from "./client.js";
import { type TlsConfig, connectionFromEnv, normalizeAddress } from "./config.js";
import {
  ClientConfigError,
  DeadlineExceededError,
  JobCancelledError,
  JobFailedError,
  JobTimeoutError,
  ProtocolError,
  RpcError,
  type ChannelSecurity,
  type SynapseError,
  UnavailableError,
  fromConnectError,
} from "./errors.js";
import type { JobEvent, ProgressEvent, TerminalEvent } from "./gen/synapse/plugin/v1/job_event_pb.js";
import { type Job, JobState, JobView, RunMode } from "./gen/synapse/plugin/v1/job_pb.js";
import type { Plugin } from "./gen/synapse/plugin/v1/plugin_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Tensor, TensorSchema } from "./gen/synapse/plugin/v1/tensor_pb.js";

/** Exponential backoff for calls that failed with UNAVAILABLE (never a failed TLS set-up). */
export interface RetryPolicy {
  /** Attempts in all, the first included; 1 retries nothing. */
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}

/** Five attempts, 100 ms doubling up to 5 s (each delay up to 20% shorter, at random). */
export const DEFAULT_RETRY: Readonly<RetryPolicy> = {
  maxAttempts: 5,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
};

/** Options of {@link Client}. */
export interface ClientOptions {
  /** Bearer token sent with every call. */
  token?: string;
  /** `true` for TLS with the system's trusted CAs, or a CA and client certificate (mTLS). */
  tls?: boolean | TlsConfig;
  /** Default deadline of unary calls in ms (30 s); `0` for none. Streams have none. */
  timeoutMs?: number;
  /** Retries of calls that failed with UNAVAILABLE. */
  retry?: Partial<RetryPolicy>;
  /** The largest message sent or received; match the server's `max_message_bytes`. */
  maxMessageBytes?: number;
  /** Connect interceptors every call goes through, after the auth one. */
  interceptors?: Interceptor[];
}

/** Arguments of {@link Client.runAction} besides plugin, action and params. */
export interface RunActionOptions {
  /** How the job runs; the action's default mode when omitted. */
  mode?: RunMode;
  /** Idempotency key; generated when omitted and reused by every retry. */
  requestId?: string;
}

/** What {@link Client.infer} calls: a deployed application by name, or a plugin's action. */
export type InferTarget = { application: string } | { plugin: string; action: string };

/** Arguments of {@link Client.infer}. */
export type InferRequest = InferTarget & {
  /** The model the endpoint should use (a registered model's id). */
  model?: number | bigint | string;
  /** The request body; a JSON object maps onto the endpoint's parameters. */
  json?: JsonValue;
  /** Binary inputs (Tensor messages: name, dtype, shape, little-endian data). */
  tensors?: MessageInitShape<typeof TensorSchema>[];
  method?: string;
  path?: string;
  requestId?: string;
  /** The call's deadline in ms (the client's default when omitted). */
  timeoutMs?: number;
};

/** The answer of {@link Client.infer}. */
export interface InferResult {
  /** The endpoint's JSON answer (undefined when it returned only tensors). */
  json: JsonValue | undefined;
  /** Binary outputs. */
  tensors: Tensor[];
  /** The model the endpoint used, when it said. */
  modelId: string;
  requestId: string;
  /** The serve application that answered. */
  application: string;
}

const MAX_REQUEST_ID = 128;
/** Events taken in one StreamProgress message (the server caps it). */
const EVENTS_PER_MESSAGE = 256;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function backoffMs(policy: RetryPolicy, attempt: number): number {
  const base = Math.min(
    policy.maxBackoffMs,
    policy.initialBackoffMs * policy.multiplier ** (attempt - 1),
  );
  return base * (1 - 0.2 * Math.random());
}

function parseJson(jobId: string, bytes: Uint8Array, what: string): unknown {
  if (bytes.length === 0) return null;
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    throw new ProtocolError(`job ${jobId}: the ${what} is not JSON: ${(error as Error).message}`);
  }
}

/** Raises the typed error a FAILED or CANCELLED terminal event stands for. */
function raiseForTerminal(jobId: string, terminal: TerminalEvent): void {
  if (terminal.state === JobState.FAILED) {
    const error = terminal.error;
    throw new JobFailedError(jobId, {
      type: error?.type || "Unknown",
      message: error?.message || "no error reported",
      step: error?.step ?? "",
      pluginTraceback: error?.pluginTraceback ?? "",
      correlationId: error?.correlationId ?? "",
    });
  }
  if (terminal.state === JobState.CANCELLED) throw new JobCancelledError(jobId, terminal.reason);
  if (terminal.state !== JobState.SUCCEEDED) {
    throw new ProtocolError(`job ${jobId}: terminal event with state ${JobState[terminal.state]}`);
  }
}

/** Options of {@link JobHandle.events}. */
export interface EventsOptions {
  /** Deliver events with seq greater than this (a seq saved earlier resumes there). */
  afterSeq?: bigint;
  /** `false`: only the events stored so far, then stop. */
  follow?: boolean;
  /** Stop waiting (the iteration throws) when this signal aborts. */
  signal?: AbortSignal;
}

/**
 * One job on the server: follow its events, wait for its result, cancel it. Handles hold no
 * server state: any number may follow the same job, and `client.job(id)` rebuilds one.
 */
export class JobHandle {
  /** The job as the server last reported it to this handle (undefined until fetched). */
  job: Job | undefined;
  private resultValue: { value: unknown } | undefined;

  constructor(
    private readonly client: Client,
    /** The job's id. */
    readonly id: string,
    job?: Job,
    /** From runAction: false when its requestId matched a job that already existed. */
    readonly created?: boolean,
  ) {
    this.job = job;
  }

  /** Fetches the job's current state (GetJob). */
  async refresh(): Promise<Job> {
    this.job = await this.client.getJob(this.id);
    return this.job;
  }

  /**
   * Every event with seq > `afterSeq`, live, ending with the terminal event. A dropped
   * stream is reopened after the last delivered seq, so each event arrives once and in order.
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    yield* this.follow(options.afterSeq ?? 0n, options.follow ?? true, options.signal);
  }

  /** Like {@link events}, keeping only the progress reports. */
  async *progress(options: EventsOptions = {}): AsyncGenerator<ProgressEvent, void, undefined> {
    for await (const event of this.events(options)) {
      if (event.kind.case === "progress") yield event.kind.value;
    }
  }

  /**
   * Waits for the job to end and returns its parsed JSON result. Throws JobFailedError (the
   * plugin's error type, message and traceback), JobCancelledError, or JobTimeoutError after
   * `timeoutMs` (the job keeps running).
   */
  async result(options: { timeoutMs?: number } = {}): Promise<unknown> {
    if (this.resultValue !== undefined) return this.resultValue.value;
    const timeoutMs = options.timeoutMs;
    const signal = timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs);
    try {
      const job = await this.client.getJob(this.id, { view: JobView.BASIC, signal });
      // The terminal event is a job's last: for a finished job it is the one after
      // lastSeq - 1; for a running one everything after lastSeq is still to come.
      const finished = job.state >= JobState.SUCCEEDED;
      const start = finished && job.lastSeq > 0n ? job.lastSeq - 1n : job.lastSeq;
      let terminal: TerminalEvent | undefined;
      for await (const event of this.follow(start, true, signal)) {
        if (event.kind.case === "terminal") terminal = event.kind.value;
      }
      if (terminal === undefined) {
        throw new ProtocolError(`job ${this.id}: stream ended without a terminal event`);
      }
      raiseForTerminal(this.id, terminal);
      const value = terminal.resultInline
        ? parseJson(this.id, terminal.resultJson, "inline result")
        : await this.fetchResult(signal);
      this.resultValue = { value };
      return value;
    } catch (raw) {
      const error = this.client.typedError(raw);
      if (signal?.aborted && timeoutMs !== undefined && isTimeout(error)) {
        throw new JobTimeoutError(this.id, timeoutMs);
      }
      throw error;
    }
  }

  /** Asks the server to cancel the job; returns the job as it is right after. */
  async cancel(reason = ""): Promise<Job> {
    this.job = await this.client.cancelJob(this.id, reason);
    return this.job;
  }

  private async *follow(
    afterSeq: bigint,
    follow: boolean,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<JobEvent, void, undefined> {
    if (afterSeq < 0n) throw new ClientConfigError("afterSeq must be >= 0");
    const policy = this.client.retryPolicy;
    let lastSeq = afterSeq;
    // Failed openings since the last delivered event: a stream that keeps delivering may
    // drop any number of times.
    let failures = 0;
    for (;;) {
      let failure: SynapseError;
      try {
        const stream = this.client.raw.actions.streamProgress(
          {
            jobId: this.id,
            afterSeq: lastSeq,
            replayOnly: !follow,
            // A burst of events (a job logging in a loop, a replay) comes in a few messages.
            maxEventsPerMessage: EVENTS_PER_MESSAGE,
          },
          signal === undefined ? {} : { signal },
        );
        for await (const message of stream) {
          this.client.markAnswered();
          let events: JobEvent[];
          if (message.kind.case === "event") events = [message.kind.value];
          else if (message.kind.case === "events") events = message.kind.value.events;
          else continue;
          for (const event of events) {
            // A reconnect replays from lastSeq; seqs may skip ahead where the server dropped
            // superseded progress reports, never logs or the terminal event.
            if (event.seq <= lastSeq) continue;
            lastSeq = event.seq;
            failures = 0;
            yield event;
            if (event.kind.case === "terminal") return;
          }
        }
        if (!follow) return;
        failure = new ProtocolError(
          `job ${this.id}: progress stream ended before the terminal event`,
        );
      } catch (raw) {
        failure = this.client.typedError(raw);
      }
      failures++;
      const recoverable =
        failure instanceof ProtocolError ||
        (failure instanceof UnavailableError && failure.retryable);
      if (!recoverable || failures >= policy.maxAttempts || signal?.aborted) throw failure;
      await sleep(backoffMs(policy, failures));
    }
  }

  private async fetchResult(signal: AbortSignal | undefined): Promise<unknown> {
    return this.client.retrying(async () => {
      const parts: Uint8Array[] = [];
      let received = 0n;
      let total: bigint | undefined;
      for await (const chunk of this.client.raw.actions.getJobResult(
        { jobId: this.id },
        signal === undefined ? {} : { signal },
      )) {
        if (chunk.offset !== received) {
          throw new ProtocolError(
            `job ${this.id}: result chunk at offset ${chunk.offset}, expected ${received}`,
          );
        }
        total ??= chunk.totalSizeBytes;
        parts.push(chunk.data);
        received += BigInt(chunk.data.length);
      }
      if (received !== (total ?? 0n)) {
        throw new ProtocolError(
          `job ${this.id}: result stream ended after ${received} of ${total ?? 0n} bytes`,
        );
      }
      return parseJson(this.id, Buffer.concat(parts), "result");
    });
  }
}

function isTimeout(error: SynapseError): boolean {
  // An aborted signal ends Connect calls with CANCELED or DEADLINE_EXCEEDED.
  return error instanceof DeadlineExceededError || (error instanceof RpcError && error.code === 1);
}

/**
 * Client of a Synapse server: `new Client("host:port", { token, tls })` or
 * {@link Client.fromEnv}. Every failed call throws a SynapseError subclass (NotFoundError,
 * InvalidArgumentError, ...); calls that failed with UNAVAILABLE are retried with backoff
 * first. `raw` holds the generated service clients for everything else.
 */
export class Client {
  /** The generated clients of each service, on this client's connection. */
  readonly raw: SynapseClient;
  /** The `host:port` this client dials. */
  readonly address: string;
  readonly retryPolicy: Readonly<RetryPolicy>;
  private readonly timeoutMs: number;
  private readonly tls: boolean;
  private readonly clientCertificate: boolean;
  /** Whether a call has succeeded yet (see {@link ChannelSecurity.untested}). */
  private answered = false;

  constructor(address: string, options: ClientOptions = {}) {
    this.address = normalizeAddress(address);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs < 0) {
      throw new ClientConfigError("timeoutMs must be a positive number of ms (0: no deadline)");
    }
    const retry = { ...DEFAULT_RETRY, ...options.retry };
    if (!Number.isInteger(retry.maxAttempts) || retry.maxAttempts < 1) {
      throw new ClientConfigError("retry.maxAttempts must be an integer of at least 1");
    }
    if (retry.initialBackoffMs < 0 || retry.maxBackoffMs < 0 || !(retry.multiplier >= 1)) {
      throw new ClientConfigError("retry backoffs must be >= 0 and the multiplier >= 1");
    }
    this.retryPolicy = retry;
    if (options.token !== undefined && (options.token === "" || /[\r\n]/.test(options.token))) {
      throw new ClientConfigError("token must be a non-empty single-line string");
    }
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    if (!Number.isInteger(maxMessageBytes) || maxMessageBytes <= 0) {
      throw new ClientConfigError("maxMessageBytes must be a positive integer");
    }
    this.tls = options.tls !== undefined && options.tls !== false;
    this.clientCertificate = typeof options.tls === "object" && options.tls.cert !== undefined;
    this.raw = createSynapseClient(this.address, {
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.tls !== undefined ? { tls: options.tls } : {}),
      ...(options.interceptors !== undefined ? { interceptors: options.interceptors } : {}),
      maxMessageBytes,
    });
  }

  /**
   * A client configured by the `SYNAPSE_*` variables of `env` (`process.env`):
   * `SYNAPSE_SERVER` (`host:port`; the port defaults to 50051), `SYNAPSE_TOKEN`, and for TLS
   * `SYNAPSE_TLS=1` (system CAs), `SYNAPSE_TLS_CA`, `SYNAPSE_TLS_CERT` + `SYNAPSE_TLS_KEY`
   * (mutual TLS) and `SYNAPSE_TLS_SERVER_NAME`: the variables the Python client and the
   * `synapse` command read. Throws ClientConfigError naming a missing or malformed variable.
   */
  static fromEnv(
    env: Record<string, string | undefined> = process.env,
    options: Omit<ClientOptions, "token" | "tls"> = {},
  ): Client {
    const { address, token, tls } = connectionFromEnv(env);
    return new Client(address, {
      ...options,
      ...(token !== undefined ? { token } : {}),
      tls,
    });
  }

  /** The typed error for what a call of this client threw. */
  typedError(raw: unknown): SynapseError {
    return fromConnectError(raw, {
      tls: this.tls,
      clientCertificate: this.clientCertificate,
      untested: !this.answered,
    });
  }

  /** Records that the server answered a call (its connection set-up works). */
  markAnswered(): void {
    this.answered = true;
  }

  /**
   * Runs `call` until it succeeds, retrying UNAVAILABLE (but not a failed TLS set-up) per the
   * retry policy; throws the typed error of the last failure.
   */
  async retrying<T>(call: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        const answer = await call();
        this.answered = true;
        return answer;
      } catch (raw) {
        const error = this.typedError(raw);
        if (!(error instanceof RpcError && error.retryable) || attempt >= this.retryPolicy.maxAttempts) {
          throw error;
        }
        await sleep(backoffMs(this.retryPolicy, attempt));
      }
    }
  }

  private callOptions(timeoutMs?: number, signal?: AbortSignal): CallOptions {
    const options: CallOptions = {};
    const ms = timeoutMs ?? this.timeoutMs;
    if (ms > 0) options.timeoutMs = ms;
    if (signal !== undefined) options.signal = signal;
    return options;
  }

  /** The installed plugins (or just `plugin`) with their actions and params schemas. */
  async listActions(plugin?: string): Promise<Plugin[]> {
    const answer = await this.retrying(() =>
      this.raw.actions.listActions({ plugin: plugin ?? "" }, this.callOptions()),
    );
    return answer.plugins;
  }

  /**
   * Starts `plugin`'s `action` with `params` as a job and returns its handle. A retry after a
   * lost answer sends the same requestId, so it never starts a second job.
   */
  async runAction(
    plugin: string,
    action: string,
    params: Record<string, unknown> = {},
    options: RunActionOptions = {},
  ): Promise<JobHandle> {
    if (!plugin) throw new ClientConfigError("plugin must be a non-empty plugin code");
    if (!action) throw new ClientConfigError("action must be a non-empty action name");
    if (params === null || typeof params !== "object" || Array.isArray(params)) {
      throw new ClientConfigError("params must be a JSON object");
    }
    const requestId = options.requestId ?? randomUUID().replaceAll("-", "");
    if (requestId === "" || requestId.length > MAX_REQUEST_ID) {
      throw new ClientConfigError(`requestId must be 1 to ${MAX_REQUEST_ID} characters`);
    }
    let paramsJson: Uint8Array;
    try {
      // JSON text rather than a Struct: cheaper to build and parse for large params.
      paramsJson = new TextEncoder().encode(JSON.stringify(params));
    } catch (error) {
      throw new ClientConfigError(`params cannot be sent as JSON: ${(error as Error).message}`);
    }
    const answer = await this.retrying(() =>
      this.raw.actions.runAction(
        { plugin, action, paramsJson, mode: options.mode ?? RunMode.UNSPECIFIED, requestId },
        this.callOptions(),
      ),
    );
    if (answer.job === undefined) throw new ProtocolError("RunAction answered without a job");
    return new JobHandle(this, answer.job.id, answer.job, answer.created);
  }

  /** A handle for an existing job (no call is made). */
  job(jobId: string): JobHandle {
    if (!jobId) throw new ClientConfigError("jobId must be non-empty");
    return new JobHandle(this, jobId);
  }

  /** One job by id; NotFoundError for an unknown one (or another tenant's). */
  async getJob(
    jobId: string,
    options: { view?: JobView; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<Job> {
    const answer = await this.retrying(() =>
      this.raw.actions.getJob(
        { jobId, view: options.view ?? JobView.FULL },
        this.callOptions(options.timeoutMs, options.signal),
      ),
    );
    if (answer.job === undefined) throw new ProtocolError("GetJob answered without a job");
    return answer.job;
  }

  /** Asks the server to cancel a job; a finished job is returned unchanged. */
  async cancelJob(jobId: string, reason = ""): Promise<Job> {
    const answer = await this.retrying(() =>
      this.raw.actions.cancelJob({ jobId, reason }, this.callOptions()),
    );
    if (answer.job === undefined) throw new ProtocolError("CancelJob answered without a job");
    return answer.job;
  }

  /**
   * Calls a deployed endpoint, by application name or by plugin + action. Throws the typed
   * errors (NotFoundError, InvalidArgumentError, UnavailableError, DeadlineExceededError...).
   * Not retried: an endpoint call need not be idempotent.
   */
  async infer(request: InferRequest): Promise<InferResult> {
    let target:
      | { case: "application"; value: string }
      | { case: "action"; value: { plugin: string; action: string } };
    if ("application" in request) {
      if (!request.application) throw new ClientConfigError("application must be non-empty");
      target = { case: "application", value: request.application };
    } else if ("plugin" in request && "action" in request) {
      if (!request.plugin || !request.action) {
        throw new ClientConfigError("plugin and action must be non-empty");
      }
      target = { case: "action", value: { plugin: request.plugin, action: request.action } };
    } else {
      throw new ClientConfigError("infer needs an application, or a plugin and an action");
    }
    let json;
    try {
      json = request.json === undefined ? undefined : fromJson(ValueSchema, request.json);
    } catch (error) {
      throw new ClientConfigError(`json cannot be sent: ${(error as Error).message}`);
    }
    try {
      const answer = await this.raw.inference.infer(
        {
          target,
          modelId: request.model === undefined ? "" : String(request.model),
          ...(json !== undefined ? { json } : {}),
          inputs: request.tensors ?? [],
          method: request.method ?? "",
          path: request.path ?? "",
          requestId: request.requestId ?? randomUUID(),
        },
        this.callOptions(request.timeoutMs),
      );
      this.answered = true;
      return {
        json: answer.json === undefined ? undefined : toJson(ValueSchema, answer.json),
        tensors: answer.outputs,
        modelId: answer.modelId,
        requestId: answer.requestId,
        application: answer.application,
      };
    } catch (raw) {
      throw this.typedError(raw);
    }
  }
}
