// A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1, plus
// helpers to build small OCI layouts by hand and load them into it with skopeo.
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import type { RunConfig } from "../../src/image/types.js";
import { sha256Digest } from "../../src/registry/manifest.js";
import { BLOCK_INDEX_MEDIA_TYPE, type Digest } from "../../src/store/types.js";
import { exec } from "../../src/util/exec.js";

export interface RegistryOptions {
  /** "basic": htpasswd (bcrypt) auth with `users`; default "none". */
  auth?: "none" | "basic";
  /** user -> password for basic auth; default { kindling: "secret" }. */
  users?: Record<string, string>;
  /** How long to wait for /v2/ to answer; default 20 s. */
  startTimeoutMs?: number;
  /** Serve HTTPS with a fresh self-signed certificate for 127.0.0.1 (see caFile). */
  tls?: boolean;
}

export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** "http://127.0.0.1:PORT" (https:// with tls). */
  url: string;
  /** With tls: the PEM certificate to trust (e.g. NODE_EXTRA_CA_CERTS for a child process). */
  caFile?: string;
  /** The registry's filesystem storage root (docker/registry/v2/... lives below it). */
  dataDir: string;
  /** Its config.yml (e.g. for `docker-registry garbage-collect`). */
  configPath: string;
  auth: "none" | "basic";
  /** user -> password when auth is "basic". */
  users: Record<string, string>;
  /** Kills the registry and removes its temp dir; safe to call twice. */
  stop(): Promise<void>;
  /** Sends a signal to the registry process: SIGSTOP freezes it (it stops answering), SIGCONT thaws it. */
  signal(sig: NodeJS.Signals): void;
}

// Registries still running when the test process exits (e.g. a crash between before and after hooks).
const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** A port free right now on 127.0.0.1 (the kernel picks it; racy but retried by startRegistry). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<TestRegistry> {
  let lastErr: unknown;
  // Another process may grab the port between freePort() and the registry's bind: retry.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(opts);
    } catch (err) {
      lastErr = err;
      if (!String(err).includes("address already in use")) throw err;
    }
  }
  throw lastErr;
}

async function startOnce(opts: RegistryOptions): Promise<TestRegistry> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kindling-registry-"));
  const dataDir = path.join(dir, "data");
  const users = opts.users ?? { kindling: "secret" };
  let child: ChildProcess | undefined;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (child) await killAndWait(child);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await mkdir(dataDir);
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    let auth = "";
    if (opts.auth === "basic") {
      const lines: string[] = [];
      for (const [user, pass] of Object.entries(users)) {
        // bcrypt is the only hash distribution's htpasswd backend accepts.
        const { stdout } = await exec("htpasswd", ["-Bbn", user, pass]);
        lines.push(stdout.trim());
      }
      await writeFile(path.join(dir, "htpasswd"), `${lines.join("\n")}\n`);
      auth = `auth:\n  htpasswd:\n    realm: kindling-test\n    path: ${path.join(dir, "htpasswd")}\n`;
    }
    let tls = "";
    let ca: Buffer | undefined;
    const caFile = opts.tls ? path.join(dir, "cert.pem") : undefined;
    if (caFile) {
      const keyFile = path.join(dir, "key.pem");
      const subject =
        "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:TRUE";
      const args = `req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 ${subject}`;
      await exec("openssl", [...args.split(" "), "-keyout", keyFile, "-out", caFile]);
      ca = await readFile(caFile);
      tls = `  tls:\n    certificate: ${caFile}\n    key: ${keyFile}\n`;
    }
    const config = [
      "version: 0.1",
      "log:",
      "  level: info",
      "  accesslog:",
      "    disabled: true",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${dataDir}`,
      "  delete:",
      "    enabled: true",
      "  maintenance:",
      "    uploadpurging:",
      "      enabled: false",
      "http:",
      `  addr: ${host}`,
      `  secret: ${randomBytes(16).toString("hex")}`,
      tls,
      auth,
    ].join("\n");
    const configPath = path.join(dir, "config.yml");
    await writeFile(configPath, config);

    let exitCode: number | null | undefined;
    const log: Buffer[] = [];
    child = spawn("/usr/bin/docker-registry", ["serve", configPath], { stdio: ["ignore", "pipe", "pipe"] });
    live.add(child);
    const exited = new Promise<number | null>((resolve) => child!.once("exit", (code) => resolve(code)));
    const onData = (d: Buffer) => {
      log.push(d);
      if (log.length > 200) log.splice(0, 100); // keep the tail only
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("error", (err) => {
      // e.g. ENOENT: no exit event follows, so stop waiting now.
      log.push(Buffer.from(`${err} (is docker-registry installed? scripts/setup.sh installs it)`));
      exitCode ??= -1;
    });

    const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
    void exited.then((code) => {
      exitCode = code;
    });
    for (;;) {
      if (exitCode !== undefined) {
        throw new Error(`docker-registry exited (${exitCode}) before serving: ${tail(log)}`);
      }
      if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${host}: ${tail(log)}`);
      const status = await probe(host, ca).catch(() => 0); // 0: not listening yet
      if (status === 200 || status === 401) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const url = `${caFile ? "https" : "http"}://${host}`;
    const signal = (sig: NodeJS.Signals) => void child?.kill(sig);
    return { host, url, dataDir, configPath, caFile, auth: opts.auth ?? "none", users, stop, signal };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** GET /v2/ -> status; over TLS trusting only `ca` (fetch cannot be given a CA in Node 20). */
function probe(host: string, ca?: Buffer): Promise<number> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    const mod = ca ? https : http;
    const req = mod.get({ hostname, port: Number(port), path: "/v2/", ca, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

function tail(log: Buffer[]): string {
  return Buffer.concat(log).toString().trim().split("\n").slice(-5).join("\n");
}

async function killAndWait(child: ChildProcess): Promise<void> {
  // No pid: it never started. An exit code or signal: it already ended.
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
    live.delete(child);
    return;
  }
  const done = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
  await done;
  clearTimeout(timer);
  live.delete(child);
}

/** Where the registry keeps a blob's bytes (to corrupt it in a test). */
export function registryBlobPath(reg: Pick<TestRegistry, "dataDir">, digest: string): string {
  const hex = digest.replace(/^sha256:/, "");
  return path.join(reg.dataDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
}

/**
 * Copies `oci:layoutDir:tag` to `HOST/repo:destTag` with skopeo, keeping digests and all platforms
 * of an index (or converting to Docker schema 2 with format "v2s2"). Returns the pushed reference.
 */
export async function loadOciLayout(
  reg: TestRegistry,
  layoutDir: string,
  tag: string,
  repo: string,
  destTag = tag,
  opts: { format?: "v2s2" } = {},
): Promise<string> {
  const ref = `${reg.host}/${repo}:${destTag}`;
  const args = ["copy", "--quiet", "--dest-tls-verify=false"];
  args.push(...(opts.format ? ["--format", opts.format] : ["--all", "--preserve-digests"]));
  const [user] = Object.keys(reg.users);
  if (reg.auth === "basic" && user !== undefined) args.push("--dest-creds", `${user}:${reg.users[user]}`);
  args.push(`oci:${layoutDir}:${tag}`, `docker://${ref}`);
  await exec("skopeo", args);
  return ref;
}

export interface BearerProxy {
  /** "127.0.0.1:PORT": use it as the registry host. */
  host: string;
  /** Every query string the token endpoint received. */
  tokenRequests: URLSearchParams[];
  /** Authorization headers the token endpoint received ("" when anonymous). */
  tokenAuth: string[];
  /** Invalidates every token issued so far (as an expiry would). */
  revokeTokens(): void;
  stop(): Promise<void>;
}

/**
 * A token-auth front for a test registry, like Docker Hub's: without a valid bearer token it answers
 * 401 + `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; GET /token issues one (also
 * anonymously, or only with `requireUser` Basic credentials); authorized requests are forwarded.
 */
export async function startBearerProxy(
  reg: TestRegistry,
  opts: {
    requireUser?: { user: string; password: string };
    service?: string;
    /** Also accept POST /token with this OAuth2 refresh token (docker's identitytoken). */
    refreshToken?: string;
  } = {},
): Promise<BearerProxy> {
  const service = opts.service ?? "kindling-test-registry";
  const tokens = new Set<string>();
  const tokenRequests: URLSearchParams[] = [];
  const tokenAuth: string[] = [];
  const [regHost, regPort] = reg.host.split(":");
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/token" && req.method === "POST") {
      const body: Buffer[] = [];
      req.on("data", (d: Buffer) => body.push(d));
      req.on("end", () => {
        const form = new URLSearchParams(Buffer.concat(body).toString());
        tokenRequests.push(form);
        tokenAuth.push(req.headers.authorization ?? "");
        const ok =
          opts.refreshToken !== undefined &&
          form.get("grant_type") === "refresh_token" &&
          form.get("refresh_token") === opts.refreshToken &&
          form.get("service") === service;
        if (!ok) {
          res.writeHead(401).end();
          return;
        }
        const token = randomBytes(12).toString("hex");
        tokens.add(token);
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ access_token: token, expires_in: 300 }));
      });
      return;
    }
    if (url.pathname === "/token") {
      tokenRequests.push(url.searchParams);
      const auth = req.headers.authorization ?? "";
      tokenAuth.push(auth);
      const want = opts.requireUser;
      if (want && auth !== `Basic ${Buffer.from(`${want.user}:${want.password}`).toString("base64")}`) {
        res.writeHead(401).end();
        return;
      }
      if (url.searchParams.get("service") !== service) {
        res.writeHead(400).end("wrong service");
        return;
      }
      const token = randomBytes(12).toString("hex");
      tokens.add(token);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ token, expires_in: 300 }));
      return;
    }
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (!bearer || !tokens.has(bearer)) {
      const repo = /^\/v2\/(.+?)\/(?:manifests|blobs|tags)\//.exec(url.pathname)?.[1];
      const scope = repo ? `,scope="repository:${repo}:pull"` : "";
      req.resume();
      res.writeHead(401, {
        "www-authenticate": `Bearer realm="http://${host}/token",service="${service}"${scope}`,
        "content-type": "application/json",
      });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    // Keep the Host header: the registry then builds upload Locations that point back at us.
    const headers = { ...req.headers };
    delete headers.authorization;
    const up = http.request(
      { host: regHost, port: Number(regPort), method: req.method, path: req.url, headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  const host = `127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}`;
  return {
    host,
    tokenRequests,
    tokenAuth,
    revokeTokens: () => tokens.clear(),
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---- Building OCI layouts by hand (quicker than umoci, and allows zstd / uncompressed layers) ----

export const MT = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  layerTar: "application/vnd.oci.image.layer.v1.tar",
  layerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  layerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { architecture: string; os: string; variant?: string };
  annotations?: Record<string, string>;
}

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** An OCI image layout being written: add blobs, manifests, then tag them into index.json. */
export class OciLayoutWriter {
  private readonly tags: Descriptor[] = [];
  constructor(readonly dir: string) {}

  static async create(dir: string): Promise<OciLayoutWriter> {
    await mkdir(path.join(dir, "blobs", "sha256"), { recursive: true });
    await writeFile(path.join(dir, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    return new OciLayoutWriter(dir);
  }

  async blob(data: Buffer | string, mediaType: string): Promise<Descriptor> {
    const buf = typeof data === "string" ? Buffer.from(data) : data;
    const digest = sha256(buf);
    await writeFile(path.join(this.dir, "blobs", "sha256", digest.slice(7)), buf);
    return { mediaType, digest, size: buf.length };
  }

  /** An image manifest for `layers` (already-encoded blobs with their media types) and a config. */
  async image(
    layers: { data: Buffer; mediaType: string }[],
    config: { architecture?: string; os?: string; config?: Record<string, unknown> } = {},
  ): Promise<Descriptor> {
    const layerDescs: Descriptor[] = [];
    for (const l of layers) layerDescs.push(await this.blob(l.data, l.mediaType));
    const cfg = {
      architecture: config.architecture ?? "amd64",
      os: config.os ?? "linux",
      config: config.config ?? {},
      // diff_ids would be the uncompressed digests; registries and our client don't check them.
      rootfs: { type: "layers", diff_ids: layerDescs.map((d) => d.digest) },
    };
    const cfgDesc = await this.blob(JSON.stringify(cfg), MT.ociConfig);
    const manifest = { schemaVersion: 2, mediaType: MT.ociManifest, config: cfgDesc, layers: layerDescs };
    const desc = await this.blob(JSON.stringify(manifest), MT.ociManifest);
    return { ...desc, platform: { architecture: cfg.architecture, os: cfg.os } };
  }

  async index(manifests: Descriptor[]): Promise<Descriptor> {
    const idx = { schemaVersion: 2, mediaType: MT.ociIndex, manifests };
    return this.blob(JSON.stringify(idx), MT.ociIndex);
  }

  /** Records `desc` under `tag` and (re)writes index.json. */
  async tag(desc: Descriptor, tag: string): Promise<void> {
    const { platform: _platform, ...plain } = desc;
    this.tags.push({ ...plain, annotations: { "org.opencontainers.image.ref.name": tag } });
    await writeFile(
      path.join(this.dir, "index.json"),
      JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: this.tags }),
    );
  }
}

/** A tar (uncompressed) of a directory's contents, made by GNU tar. */
export async function tarDir(dir: string): Promise<Buffer> {
  const out = path.join(os.tmpdir(), `kindling-tar-${process.pid}-${randomBytes(4).toString("hex")}.tar`);
  try {
    await exec("tar", ["--sort=name", "--owner=0", "--group=0", "-C", dir, "-cf", out, "."]);
    return await readFile(out);
  } finally {
    await rm(out, { force: true });
  }
}

/** A gzip-compressed layer of `files` (path -> content), written out under a fresh dir below `work`. */
export async function gzipLayer(
  work: string,
  files: Record<string, string | Buffer>,
): Promise<{ data: Buffer; mediaType: string }> {
  const root = await mkdtemp(path.join(work, "layer-root-"));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(root, name)), { recursive: true });
    await writeFile(path.join(root, name), content);
  }
  return { data: gzipSync(await tarDir(root)), mediaType: MT.layerGzip };
}

/**
 * An OCI layout at `dir` holding one image of one gzip layer of `files` (default: /hello "hi"),
 * tagged `tag` (default "v1"); load it into a registry with loadOciLayout.
 */
export async function filesLayout(
  dir: string,
  files: Record<string, string | Buffer> = { hello: "hi\n" },
  opts: { tag?: string; config?: Record<string, unknown> } = {},
): Promise<{ dir: string; image: Descriptor }> {
  await mkdir(path.dirname(dir), { recursive: true });
  const layout = await OciLayoutWriter.create(dir);
  const image = await layout.image([await gzipLayer(path.dirname(dir), files)], { config: opts.config });
  await layout.tag(image, opts.tag ?? "v1");
  return { dir, image };
}

/** zstd-compresses a buffer with the zstd CLI (Node 20's zlib has no zstd). */
export async function zstdCompress(data: Buffer): Promise<Buffer> {
  const base = path.join(os.tmpdir(), `kindling-zst-${process.pid}-${randomBytes(4).toString("hex")}`);
  try {
    await writeFile(base, data);
    await exec("zstd", ["-q", "-3", base, "-o", `${base}.zst`]);
    return await readFile(`${base}.zst`);
  } finally {
    await rm(base, { force: true });
    await rm(`${base}.zst`, { force: true });
  }
}

/** A one-chunk Kindling image (record, block index, chunk reader) for push and lazy-fetch tests. */
export function tinyKindlingImage() {
  const chunk = Buffer.from(`chunk ${Math.random()}`);
  const digest = sha256Digest(chunk);
  const index = Buffer.from(
    JSON.stringify({
      mediaType: BLOCK_INDEX_MEDIA_TYPE,
      format: "squashfs",
      blockSize: chunk.length,
      blockDigest: digest,
      chunking: { algorithm: "fixed", avgSize: 524288 },
      chunks: [{ offset: 0, length: chunk.length, digest }],
    }),
  );
  const config: RunConfig = { entrypoint: [], cmd: ["sh"], env: [], workingDir: "/", user: "" };
  return {
    chunk,
    image: {
      record: {
        name: "tiny",
        digest: sha256Digest(index),
        blockSize: chunk.length,
        config,
        origin: { kind: "local" as const },
        created: new Date().toISOString(),
      },
      index,
      readChunk: async (d: Digest) => {
        if (d !== digest) throw new Error("unknown chunk");
        return chunk;
      },
    },
  };
}
