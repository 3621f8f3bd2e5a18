// The package as a user gets it: `npm pack` holds only the built JavaScript, its type
// declarations and package.json; the tarball installs offline into a fresh project (its
// dependencies come from npm's cache, filled by `npm ci` here), imports from plain Node
// through `exports`, type-checks a TypeScript consumer against the shipped .d.ts files, and
// talks to the real server tools/run-node-e2e started.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { TOY_PLUGIN, address, token } from "./helpers.js";

// build/test/package.test.js -> client/typescript
const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const manifest = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8")) as {
  name: string;
  version: string;
  devDependencies: Record<string, string>;
};
const work = mkdtempSync(join(tmpdir(), "synapse-ts-package-"));
after(() => rmSync(work, { recursive: true, force: true }));

/**
 * A project depending on the tarball and on @types/node (as a TypeScript user on Node has it),
 * with a package-lock.json: the tarball's entry with its sha512, and for every dependency the
 * entry of this package's own lock (same versions and integrity hashes). With a lock, `npm ci`
 * needs only the tarballs, which `npm ci` here cached; without one npm would ask the registry
 * for each package's version list, which `--offline` forbids.
 */
function writeConsumerProject(project: string, tarball: string): void {
  type Entry = { version: string; dependencies?: Record<string, string>; dev?: boolean };
  const lock = JSON.parse(readFileSync(join(packageDir, "package-lock.json"), "utf8")) as {
    packages: Record<string, Entry>;
  };
  const own = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8")) as {
    dependencies: Record<string, string>;
  };
  const tarballRef = `file:${basename(tarball)}`;
  const nodeTypes = "@types/node";
  const dependencies = {
    [manifest.name]: tarballRef,
    [nodeTypes]: manifest.devDependencies[nodeTypes] ?? "",
  };
  const integrity = `sha512-${createHash("sha512").update(readFileSync(tarball)).digest("base64")}`;
  const packages: Record<string, object> = {
    "": { name: "consumer", version: "1.0.0", dependencies },
    [`node_modules/${manifest.name}`]: {
      version: manifest.version,
      resolved: tarballRef,
      integrity,
      dependencies: own.dependencies,
    },
  };
  const pending = [...Object.keys(own.dependencies), nodeTypes];
  for (let name = pending.pop(); name !== undefined; name = pending.pop()) {
    const key = `node_modules/${name}`;
    if (key in packages) continue;
    const entry = lock.packages[key];
    assert.ok(entry, `${name} is in package-lock.json`);
    const { dev: _dev, ...kept } = entry;
    packages[key] = kept;
    pending.push(...Object.keys(entry.dependencies ?? {}));
  }
  copyFileSync(tarball, join(project, basename(tarball)));
  writeFileSync(
    join(project, "package.json"),
    JSON.stringify({ name: "consumer", version: "1.0.0", private: true, type: "module", dependencies }),
  );
  writeFileSync(
    join(project, "package-lock.json"),
    JSON.stringify({ name: "consumer", version: "1.0.0", lockfileVersion: 3, requires: true, packages }),
  );
}

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): string {
  return execFileSync(command, args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, npm_config_update_notifier: "false", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 300_000,
  });
}

describe("the npm package", () => {
  let tarball = "";

  test("npm pack ships only the built code, its types and package.json", () => {
    const [packed] = JSON.parse(
      run("npm", ["pack", "--json", "--silent", "--pack-destination", work], packageDir),
    ) as { filename: string; files: { path: string }[] }[];
    assert.ok(packed);
    tarball = join(work, packed.filename);
    const files = packed.files.map((f) => f.path).sort();
    const unexpected = files.filter(
      (path) => path !== "package.json" && path !== "README.md" && !/^dist\/.*\.(js|d\.ts)$/.test(path),
    );
    assert.deepEqual(unexpected, [], "only dist/*.js, dist/*.d.ts, package.json and README.md");
    for (const needed of ["dist/index.js", "dist/index.d.ts", "dist/synapse.js", "README.md"]) {
      assert.ok(files.includes(needed), `${needed} is in the package`);
    }
    assert.ok(!files.some((path) => path.includes("worker_service")), "no worker-only stubs");
    assert.ok(!files.some((path) => path.startsWith("dist/test")), "no tests");
  });

  test("the tarball installs offline and imports from plain Node", () => {
    assert.ok(tarball, "the pack test ran first");
    const project = join(work, "consumer");
    mkdirSync(project);
    writeConsumerProject(project, tarball);
    // --offline: every tarball comes from npm's cache (filled by `npm ci` of this package).
    run("npm", ["ci", "--offline", "--no-audit", "--no-fund", "--silent"], project);

    // Plain Node, no TypeScript: the package's `exports` resolve, and the client works.
    const script = `
      import { Client, NotFoundError, JobState, createSynapseClient } from "${manifest.name}";
      import pkg from "${manifest.name}/package.json" with { type: "json" };
      const client = new Client(process.env.ADDRESS, { token: process.env.TOKEN });
      const job = await client.runAction("${TOY_PLUGIN}", "count", { n: 3 });
      const result = await job.result({ timeoutMs: 60000 });
      let notFound = false;
      try { await client.getJob("no-such-job"); } catch (e) { notFound = e instanceof NotFoundError; }
      console.log(JSON.stringify({
        version: pkg.version, result, notFound,
        state: JobState[(await job.refresh()).state],
        raw: typeof createSynapseClient,
      }));
    `;
    writeFileSync(join(project, "smoke.mjs"), script);
    const out = JSON.parse(run("node", ["smoke.mjs"], project, { ADDRESS: address, TOKEN: token }));
    assert.deepEqual(out, {
      version: manifest.version,
      result: { label: "count", n: 3, sum: 6 },
      notFound: true,
      state: "SUCCEEDED",
      raw: "function",
    });

    // A deep import of a file the package does not export is refused by `exports`.
    writeFileSync(join(project, "deep.mjs"), `import "${manifest.name}/dist/client.js";`);
    assert.throws(() => run("node", ["deep.mjs"], project), /ERR_PACKAGE_PATH_NOT_EXPORTED/);

    // A TypeScript consumer type-checks against the shipped declarations (types from `exports`).
    writeFileSync(
      join(project, "consumer.ts"),
      `import { Client, JobFailedError, type InferResult } from "${manifest.name}";
       const client: Client = Client.fromEnv({ SYNAPSE_SERVER: "localhost" });
       export async function go(): Promise<InferResult> {
         const job = await client.runAction("p", "a", { x: 1 });
         for await (const report of job.progress()) console.log(report.overallPercent.toFixed(1));
         try { await job.result({ timeoutMs: 10 }); } catch (e) { if (e instanceof JobFailedError) console.log(e.error.pluginTraceback); }
         return client.infer({ application: "app", json: { x: [1, 2] } });
       }
       // @ts-expect-error: the result of infer has no such field
       export const wrong = (r: InferResult) => r.nope;
      `,
    );
    writeFileSync(
      join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          noEmit: true,
        },
        files: ["consumer.ts"],
      }),
    );
    const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
    run("node", [tsc, "-p", "."], project);
  });
});
