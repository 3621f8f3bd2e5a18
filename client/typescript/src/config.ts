// Connection settings of the high-level Client: the server address, TLS and the SYNAPSE_*
// variables. They follow the Python client's rules (synapse_client._config) so that one set of
// variables configures both clients and the `synapse` command alike.
import { readFileSync } from "node:fs";
import { ClientConfigError } from "./errors.js";

/** Variable holding the server address (`host:port`; the port defaults to 50051). */
export const ENV_SERVER = "SYNAPSE_SERVER";
/** Variable holding the bearer token. */
export const ENV_TOKEN = "SYNAPSE_TOKEN";
/** `1`/`true`/`yes`/`on` turns TLS on with the system's trusted CAs. */
export const ENV_TLS = "SYNAPSE_TLS";
/** PEM file of the CA that issued the server's certificate (turns TLS on). */
export const ENV_TLS_CA = "SYNAPSE_TLS_CA";
/** PEM client certificate for mutual TLS (needs {@link ENV_TLS_KEY}). */
export const ENV_TLS_CERT = "SYNAPSE_TLS_CERT";
/** PEM private key of the client certificate. */
export const ENV_TLS_KEY = "SYNAPSE_TLS_KEY";
/** The name to verify in the server certificate instead of the address's host. */
export const ENV_TLS_SERVER_NAME = "SYNAPSE_TLS_SERVER_NAME";

/** The port of an address given without one: the server's default. */
export const DEFAULT_PORT = 50051;

const TRUE = new Set(["1", "true", "yes", "on"]);
const FALSE = new Set(["", "0", "false", "no", "off"]);

/**
 * TLS for the connection. `ca` verifies the server (the system's trusted CAs when omitted);
 * `cert` + `key` present a client certificate (mutual TLS). All are PEM text or bytes.
 */
export interface TlsConfig {
  ca?: string | Uint8Array;
  cert?: string | Uint8Array;
  key?: string | Uint8Array;
  /** The name to verify in the server certificate instead of the address's host. */
  serverName?: string;
}

/** Paths of the PEM files of a {@link TlsConfig}, as {@link tlsFromFiles} takes them. */
export interface TlsFiles {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  serverName?: string;
}

/** `text` quoted for a message, cut at `limit` characters (addresses come from users). */
export function shown(text: string, limit = 120): string {
  return JSON.stringify(text.length <= limit ? text : `${text.slice(0, limit)}...`);
}

/** Checks that a TLS configuration is usable: a client certificate needs its key. */
export function checkTls(tls: TlsConfig): TlsConfig {
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new ClientConfigError("mutual TLS needs both a client certificate and its private key");
  }
  if (tls.serverName !== undefined && (tls.serverName === "" || /[\s]/.test(tls.serverName))) {
    throw new ClientConfigError("tls.serverName must be a host name without spaces");
  }
  return tls;
}

/** Reads the PEM files; a file that cannot be read raises ClientConfigError naming it. */
export function tlsFromFiles(files: TlsFiles): TlsConfig {
  const read = (path: string | undefined, what: string): Buffer | undefined => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? "unreadable";
      throw new ClientConfigError(`cannot read ${what} ${shown(path)}: ${code}`);
    }
  };
  const tls: TlsConfig = {};
  const ca = read(files.caFile, "CA certificate file");
  const cert = read(files.certFile, "client certificate file");
  const key = read(files.keyFile, "client key file");
  if (ca !== undefined) tls.ca = ca;
  if (cert !== undefined) tls.cert = cert;
  if (key !== undefined) tls.key = key;
  if (files.serverName !== undefined) tls.serverName = files.serverName;
  return checkTls(tls);
}

/**
 * The `host:port` to dial for a server address, the port 50051 when left out.
 *
 * `localhost` becomes `localhost:50051` and a bare IPv6 address `[::1]:50051`. A URL such as
 * `http://host:port` raises ClientConfigError saying to drop the scheme (TLS is the `tls`
 * option), as does a port that is not a number from 1 to 65535.
 */
export function normalizeAddress(address: string): string {
  const text = address.trim();
  if (text === "") {
    throw new ClientConfigError("server address must be a non-empty 'host:port' string");
  }
  const schemeEnd = text.indexOf("://");
  if (schemeEnd >= 0) {
    const scheme = text.slice(0, schemeEnd);
    const rest = text.slice(schemeEnd + 3).replace(/\/+$/, "");
    const also = /^(https|grpcs)$/i.test(scheme) ? " and connect with TLS" : "";
    throw new ClientConfigError(
      `server address ${shown(text)} is a URL: drop the scheme '${scheme.slice(0, 16)}://' and ` +
        `pass host:port (${shown(rest)})${also}`,
    );
  }
  let host: string;
  let port: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) throw new ClientConfigError(`server address ${shown(text)}: ']' is missing`);
    host = text.slice(0, close + 1);
    const tail = text.slice(close + 1);
    if (tail === "") return `${text}:${DEFAULT_PORT}`;
    port = tail.startsWith(":") ? tail.slice(1) : undefined;
  } else if ((text.match(/:/g) ?? []).length > 1) {
    // A bare IPv6 address: its colons are not a port separator.
    return `[${text}]:${DEFAULT_PORT}`;
  } else {
    const colon = text.indexOf(":");
    if (colon < 0) return `${text}:${DEFAULT_PORT}`;
    host = text.slice(0, colon);
    port = text.slice(colon + 1);
  }
  const number = port !== undefined && /^[0-9]{1,5}$/.test(port) ? Number(port) : 0;
  if (number < 1 || number > 65535) {
    throw new ClientConfigError(
      `server address ${shown(text)}: the port must be a number from 1 to 65535`,
    );
  }
  if (host === "" || host === "[]" || /[\s/]/.test(host)) {
    throw new ClientConfigError(`server address ${shown(text)} has no valid host`);
  }
  return text;
}

function envFlag(env: Record<string, string | undefined>, name: string): boolean {
  const value = (env[name] ?? "").trim().toLowerCase();
  if (TRUE.has(value)) return true;
  if (FALSE.has(value)) return false;
  throw new ClientConfigError(
    `${name} must be 1/true/yes/on or 0/false/no/off, got ${shown(value, 20)}`,
  );
}

/** What {@link connectionFromEnv} reads: where to connect, the token, and TLS. */
export interface EnvConnection {
  address: string;
  token: string | undefined;
  tls: boolean | TlsConfig;
}

/**
 * The address, token and TLS settings of the `SYNAPSE_*` variables in `env`.
 *
 * TLS is on when `SYNAPSE_TLS` is true or any TLS file or the server name is set (the files are
 * read here: a missing one raises ClientConfigError naming it). Empty variables count as unset.
 * No `SYNAPSE_SERVER` raises ClientConfigError.
 */
export function connectionFromEnv(env: Record<string, string | undefined>): EnvConnection {
  const address = (env[ENV_SERVER] ?? "").trim();
  if (address === "") {
    throw new ClientConfigError(`no server address: set ${ENV_SERVER} (host:port)`);
  }
  const token = env[ENV_TOKEN] || undefined;
  const set = (name: string) => env[name] || undefined;
  let tls: boolean | TlsConfig = envFlag(env, ENV_TLS);
  const files: TlsFiles = {};
  const caFile = set(ENV_TLS_CA);
  const certFile = set(ENV_TLS_CERT);
  const keyFile = set(ENV_TLS_KEY);
  const serverName = set(ENV_TLS_SERVER_NAME);
  if (caFile !== undefined) files.caFile = caFile;
  if (certFile !== undefined) files.certFile = certFile;
  if (keyFile !== undefined) files.keyFile = keyFile;
  if (serverName !== undefined) files.serverName = serverName;
  if (Object.keys(files).length > 0) tls = tlsFromFiles(files);
  return { address, token, tls };
}
