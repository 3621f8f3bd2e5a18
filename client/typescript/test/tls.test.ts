// TLS and mutual TLS against real servers (tools/run-node-e2e starts one of each with
// certificates it makes with tests/_pki.py): a job runs over each when the client trusts the
// CA and, for mutual TLS, presents a certificate that CA issued; every wrong setting fails as a
// TransportSecurityError that is not retried.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import {
  Client,
  type RetryPolicy,
  SynapseError,
  TransportSecurityError,
  tlsFromFiles,
} from "../src/index.js";
import { TOY_PLUGIN, token } from "./helpers.js";

function requiredEnv(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: start these tests with tools/run-node-e2e`);
  return value;
}

const tlsAddress = requiredEnv("SYNAPSE_TLS_ADDRESS");
const mtlsAddress = requiredEnv("SYNAPSE_MTLS_ADDRESS");
const pki = requiredEnv("SYNAPSE_E2E_PKI");
const caFile = join(pki, "ca", "server-ca.pem");
const clientCert = join(pki, "ca", "client.crt");
const clientKey = join(pki, "ca", "client.key");
const otherCa = join(pki, "other", "other-ca.pem");
const intruderCert = join(pki, "other", "intruder.crt");
const intruderKey = join(pki, "other", "intruder.key");
const plainAddress = requiredEnv("SYNAPSE_ADDRESS");

/** Counts the attempts a client makes, so "not retried" does not depend on timing. */
const noWait: Partial<RetryPolicy> = { maxAttempts: 3, initialBackoffMs: 0, maxBackoffMs: 0 };

async function runsAJob(client: Client): Promise<void> {
  const job = await client.runAction(TOY_PLUGIN, "count", { n: 2, label: "tls" });
  assert.deepEqual(await job.result({ timeoutMs: 60_000 }), { label: "tls", n: 2, sum: 3 });
}

/**
 * Asserts the client's first call fails its TLS set-up with a message matching `explains`, and
 * was attempted only once.
 */
async function failsTls(client: Client, explains: RegExp): Promise<TransportSecurityError> {
  let calls = 0;
  try {
    await client.retrying(() => {
      calls++;
      return client.raw.actions.listActions({}, { timeoutMs: 15_000 });
    });
  } catch (error) {
    assert.ok(
      error instanceof TransportSecurityError,
      `expected TransportSecurityError, got ${(error as Error).constructor.name}: ${(error as Error).message}`,
    );
    assert.equal(error.retryable, false);
    assert.match(error.message, explains);
    assert.equal(calls, 1, "a failed TLS set-up is not retried");
    return error;
  }
  assert.fail("the call succeeded without a valid TLS set-up");
}

describe("TLS", () => {
  test("a client that trusts the server's CA runs a job", async () => {
    await runsAJob(new Client(tlsAddress, { token, tls: tlsFromFiles({ caFile }) }));
  });

  test("the CA as PEM text works the same, and 'localhost' is the certificate's name", async () => {
    const tls = tlsFromFiles({ caFile });
    const port = tlsAddress.slice(tlsAddress.lastIndexOf(":") + 1);
    const pem = Buffer.from(tls.ca ?? "").toString("utf8");
    await runsAJob(new Client(`localhost:${port}`, { token, tls: { ca: pem } }));
  });

  test("Client.fromEnv reads SYNAPSE_TLS_CA", async () => {
    await runsAJob(
      Client.fromEnv({ SYNAPSE_SERVER: tlsAddress, SYNAPSE_TOKEN: token, SYNAPSE_TLS_CA: caFile }),
    );
  });

  test("serverName: the name checked in the certificate", async () => {
    // The certificate names localhost and 127.0.0.1, not this.
    await failsTls(
      new Client(tlsAddress, {
        token,
        tls: { ...tlsFromFiles({ caFile }), serverName: "not-the-server.example" },
        retry: noWait,
      }),
      /not for this host name/,
    );
    await runsAJob(
      new Client(tlsAddress, { token, tls: { ...tlsFromFiles({ caFile }), serverName: "localhost" } }),
    );
  });

  test("a CA that did not issue the server's certificate: TransportSecurityError", async () => {
    await failsTls(
      new Client(tlsAddress, { token, tls: tlsFromFiles({ caFile: otherCa }), retry: noWait }),
      /certificate is not trusted/,
    );
    // The system's CAs do not know the test CA either.
    await failsTls(
      new Client(tlsAddress, { token, tls: true, retry: noWait }),
      /certificate is not trusted/,
    );
  });

  test("TLS to a plain-text server: TransportSecurityError", async () => {
    await failsTls(
      new Client(plainAddress, { token, tls: tlsFromFiles({ caFile }), retry: noWait }),
      /does not speak TLS/,
    );
  });

  test("plain text to a TLS server: TransportSecurityError saying it wants TLS", async () => {
    await failsTls(new Client(tlsAddress, { token, retry: noWait }), /most likely wants TLS/);
  });

  test("once a call succeeded, errors are not blamed on the connection set-up", async () => {
    const client = new Client(tlsAddress, { token, tls: tlsFromFiles({ caFile }) });
    await client.listActions();
    const error = await client.getJob("no-such-job").catch((e: unknown) => e);
    assert.ok(error instanceof SynapseError && !(error instanceof TransportSecurityError));
  });
});

describe("mutual TLS", () => {
  test("a client certificate the server's client CA issued runs a job", async () => {
    await runsAJob(
      new Client(mtlsAddress, {
        token,
        tls: tlsFromFiles({ caFile, certFile: clientCert, keyFile: clientKey }),
      }),
    );
  });

  test("Client.fromEnv reads SYNAPSE_TLS_CERT and SYNAPSE_TLS_KEY", async () => {
    await runsAJob(
      Client.fromEnv({
        SYNAPSE_SERVER: mtlsAddress,
        SYNAPSE_TOKEN: token,
        SYNAPSE_TLS_CA: caFile,
        SYNAPSE_TLS_CERT: clientCert,
        SYNAPSE_TLS_KEY: clientKey,
      }),
    );
  });

  test("no client certificate: TransportSecurityError", async () => {
    await failsTls(
      new Client(mtlsAddress, { token, tls: tlsFromFiles({ caFile }), retry: noWait }),
      /wants a client certificate/,
    );
  });

  test("a client certificate from another CA: TransportSecurityError", async () => {
    await failsTls(
      new Client(mtlsAddress, {
        token,
        tls: tlsFromFiles({ caFile, certFile: intruderCert, keyFile: intruderKey }),
        retry: noWait,
      }),
      /does not trust the client certificate/,
    );
  });

  test("a certificate without its key is refused before connecting", () => {
    assert.throws(
      () => Client.fromEnv({ SYNAPSE_SERVER: mtlsAddress, SYNAPSE_TLS_CERT: clientCert }),
      /both a client certificate and its private key/,
    );
  });
});
