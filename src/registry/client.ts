import { KindlingError } from "../util/errors.js";
import { type Challenge, parseTokenResponse, parseWwwAuthenticate, type Token } from "./auth.js";
import { type Credentials, searchCredentials } from "./credentials.js";
import { apiHost } from "./reference.js";
import { type RegistrySettings, registrySettings } from "./settings.js";

export interface ClientOptions {
  registry: string;
  /** "" for registry-wide requests (login's GET /v2/): tokens are then asked without a scope. */
  repository: string;
  /** Plain HTTP instead of HTTPS. */
  insecure: boolean;
  /** Where credentials are looked up; default: from the environment. */
  settings?: RegistrySettings;
  /** "pull" or "pull,push": the scope asked of a token server. */
  actions?: string;
  /** More token scopes, e.g. pull on the repository blobs are mounted from. */
  extraScopes?: string[];
  /** undefined: look them up (env, auth files, helpers); null: anonymous. */
  credentials?: Credentials | null;
  /** Time allowed for each attempt to get response headers; default 30 s. */
  timeoutMs?: number;
  /** Time a response body may stall before the attempt fails; default 60 s. */
  idleTimeoutMs?: number;
  /** Attempts for transient failures (network, timeout, 429, 5xx); default 4. */
  attempts?: number;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer;
  signal?: AbortSignal;
  /** Statuses returned to the caller rather than thrown (default: 2xx only). */
  okStatus?: number[];
  /** Overrides the client's timeoutMs for this request. */
  timeoutMs?: number;
  /** Overrides the client's attempts (1 for requests that cannot simply be re-sent). */
  attempts?: number;
}

/** A response plus the timer that guards its body; call done() once the body is consumed. */
export interface Reply {
  res: Response;
  /** Call on every body chunk: restarts the stall timer. */
  alive(): void;
  /** Stops the stall timer. */
  done(): void;
}

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** Failure that another attempt may cure (network error, our own timeout, 429/5xx). */
class TransientError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * A registry said no, or could not be reached. `status` is the HTTP status when there was one;
 * `transient` means retries ran out on failures that may pass (network, timeouts, 429, 5xx).
 */
export class RegistryError extends KindlingError {
  constructor(
    message: string,
    readonly status: number | undefined,
    readonly transient: boolean,
    /** The registry's error codes ("MANIFEST_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"). */
    readonly codes: string[] = [],
  ) {
    super(message, "EREGISTRY");
    this.name = "RegistryError";
  }
}

/**
 * Talks to one repository of one registry: builds URLs, authenticates (Basic, or Bearer tokens from
 * the realm named by WWW-Authenticate), retries transient failures and bounds every wait.
 */
export class RegistryClient {
  readonly registry: string;
  readonly repository: string;
  readonly base: string;
  private readonly actions: string;
  private readonly extraScopes: string[];
  private credentials: Credentials | null | undefined;
  /** The places searched when the credentials were looked up (for the 401 message). */
  private searched: string[] = [];
  private readonly settings: RegistrySettings | undefined;
  private readonly timeoutMs: number;
  private readonly idleTimeoutMs: number;
  /** Attempts for transient failures (also used by callers that re-read a broken body). */
  readonly attempts: number;
  /** Set once the registry told us how it wants to be authenticated. */
  private challenge: Challenge | undefined;
  private token: Token | undefined;
  /** A token fetch in flight, shared by concurrent requests. */
  private tokenPending: Promise<Token> | undefined;

  constructor(opts: ClientOptions) {
    this.registry = opts.registry;
    this.repository = opts.repository;
    this.base = `${opts.insecure ? "http" : "https"}://${apiHost(opts.registry)}`;
    this.actions = opts.actions ?? "pull";
    this.extraScopes = opts.extraScopes ?? [];
    this.credentials = opts.credentials;
    this.settings = opts.settings;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 60_000;
    this.attempts = Math.max(1, opts.attempts ?? 4);
  }

  /** "registry 127.0.0.1:5000": the prefix of messages. */
  get where(): string {
    return `registry ${this.registry}`;
  }

  /** URL of an API path under /v2/<repository>/ (or an absolute/relative URL the registry gave). */
  url(pathOrUrl: string): string {
    if (/^https?:\/\//.test(pathOrUrl)) return pathOrUrl;
    if (pathOrUrl.startsWith("/")) return `${this.base}${pathOrUrl}`;
    return `${this.base}/v2/${this.repository}/${pathOrUrl}`;
  }

  /**
   * Sends a request; retries transient failures with backoff; answers 401 by authenticating once.
   * Throws RegistryError for any status not 2xx nor in okStatus, naming the status and the URL.
   */
  async request(pathOrUrl: string, opts: RequestOptions = {}): Promise<Reply> {
    const url = this.url(pathOrUrl);
    const method = opts.method ?? "GET";
    const attempts = Math.max(1, opts.attempts ?? this.attempts);
    let lastErr: TransientError | undefined;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (attempt > 1) await sleep(backoffMs(attempt), opts.signal);
      try {
        return await this.authenticated(url, method, opts);
      } catch (err) {
        if (!(err instanceof TransientError)) throw err;
        lastErr = err;
      }
    }
    const tries = attempts > 1 ? ` after ${attempts} attempts` : "";
    throw new RegistryError(
      `${this.where}: ${method} ${url} failed${tries}: ${lastErr!.message}`,
      lastErr!.status,
      true,
    );
  }

  /** One attempt, plus one re-send after answering a 401 challenge. */
  private async authenticated(url: string, method: string, opts: RequestOptions): Promise<Reply> {
    // Credentials and tokens go only to the registry itself, not to another host an upload Location names.
    const ours = new URL(url).origin === new URL(this.base).origin;
    const authorization = async () => (ours ? this.authorization() : undefined);
    const used = await authorization();
    let reply = await this.send(url, method, opts, used);
    if (reply.res.status === 401) {
      const header = reply.res.headers.get("www-authenticate") ?? "";
      await discard(reply);
      const challenges = parseWwwAuthenticate(header);
      const chosen =
        challenges.find((c) => c.scheme === "bearer") ?? challenges.find((c) => c.scheme === "basic");
      if (!chosen) {
        throw new RegistryError(
          `${this.where} returned 401 for ${method} ${url} without a usable WWW-Authenticate challenge ("${header}")`,
          401,
          false,
        );
      }
      this.challenge = chosen;
      // Drop the token only if it is the one refused: a concurrent request may have renewed it already.
      if (used !== undefined && used === `Bearer ${this.token?.token}`) this.token = undefined;
      reply = await this.send(url, method, opts, await authorization());
      if (reply.res.status === 401) {
        await discard(reply);
        const creds = await this.creds();
        throw new RegistryError(
          creds
            ? `${this.where} returned 401 for ${method} ${url}: check credentials (from ${creds.source})`
            : `${this.where} returned 401 for ${method} ${url}: it requires credentials and none were found for ${this.registry} (searched ${this.searched.join(", ") || "nothing"}); run \`kindling login ${this.registry}\``,
          401,
          false,
        );
      }
    }
    const { status } = reply.res;
    if ((status >= 200 && status < 300) || opts.okStatus?.includes(status)) return reply;
    const { text, codes } = await errorDetail(reply);
    if (RETRY_STATUS.has(status)) throw new TransientError(`status ${status}${text}`, status);
    const hint =
      status === 403
        ? ": access denied, check credentials and permissions"
        : status === 404
          ? ": not found"
          : "";
    throw new RegistryError(
      `${this.where} returned ${status} for ${method} ${url}${hint}${text}`,
      status,
      false,
      codes,
    );
  }

  /** The fetch itself, with a header timeout and a body stall timer. */
  private async send(url: string, method: string, opts: RequestOptions, auth?: string): Promise<Reply> {
    const ctl = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, ctl.signal]) : ctl.signal;
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    const arm = (ms: number, what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = true;
        ctl.abort(new TransientError(`${what} within ${ms / 1000} s`));
      }, ms);
    };
    arm(opts.timeoutMs ?? this.timeoutMs, "no answer");
    const headers: Record<string, string> = { "user-agent": "kindling/0.1", ...opts.headers };
    if (auth) headers.authorization = auth;
    let res: Response;
    try {
      // Buffer is a Uint8Array at runtime; the DOM typings just do not say so.
      const body = opts.body as Uint8Array<ArrayBuffer> | undefined;
      res = await fetch(url, { method, headers, body, signal, redirect: "follow" });
    } catch (err) {
      clearTimeout(timer);
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      if (timedOut)
        throw new TransientError(`no answer within ${(opts.timeoutMs ?? this.timeoutMs) / 1000} s`);
      const failure = networkFailure(err, this.base);
      if (failure.permanent) {
        throw new RegistryError(`${this.where}: ${method} ${url}: ${failure.message}`, undefined, false);
      }
      throw new TransientError(failure.message);
    }
    const stalled = "response body stalled: no data";
    arm(this.idleTimeoutMs, stalled);
    return {
      res,
      alive: () => arm(this.idleTimeoutMs, stalled),
      done: () => clearTimeout(timer),
    };
  }

  private async creds(): Promise<Credentials | undefined> {
    if (this.credentials === undefined) {
      const found = await searchCredentials(
        this.registry,
        this.repository,
        this.settings ?? registrySettings(),
      );
      this.searched = found.searched;
      this.credentials = found.credentials ?? null;
    }
    return this.credentials ?? undefined;
  }

  /** The Authorization header for the challenge we know about (none before the first 401). */
  private async authorization(): Promise<string | undefined> {
    const ch = this.challenge;
    if (!ch) return undefined;
    const creds = await this.creds();
    if (ch.scheme === "basic") {
      return creds ? basic(creds) : undefined;
    }
    if (!this.token || this.token.expiresAt <= Date.now()) {
      // Many chunk fetches start at once; one token request serves them all.
      // Not bound to one caller's signal: its abort must not fail the others (timeouts bound it).
      this.tokenPending ??= this.fetchToken(ch, creds).finally(() => {
        this.tokenPending = undefined;
      });
      this.token = await this.tokenPending;
    }
    return `Bearer ${this.token.token}`;
  }

  /** Docker token flow: GET realm?service=..&scope=.., with Basic credentials when we have them. */
  private async fetchToken(
    ch: Challenge,
    creds: Credentials | undefined,
    signal?: AbortSignal,
  ): Promise<Token> {
    const realm = ch.params.realm;
    if (!realm) throw new KindlingError(`${this.where} sent a Bearer challenge without a realm`);
    let tokenUrl: URL;
    try {
      tokenUrl = new URL(realm);
    } catch {
      throw new KindlingError(`${this.where} sent a Bearer realm that is not a URL: "${realm}"`);
    }
    if (ch.params.service) tokenUrl.searchParams.set("service", ch.params.service);
    const ours = `repository:${this.repository}:`;
    const scopes = new Set(this.repository ? [ours + this.actions, ...this.extraScopes] : this.extraScopes);
    // Also ask for what the challenge names, unless our own scope already covers it.
    for (const s of (ch.params.scope ?? "").split(" ")) {
      const covered =
        s.startsWith(ours) &&
        s
          .slice(ours.length)
          .split(",")
          .every((a) => this.actions.includes(a));
      if (s && !covered) scopes.add(s);
    }
    for (const s of scopes) tokenUrl.searchParams.append("scope", s);
    const headers: Record<string, string> = { "user-agent": "kindling/0.1" };
    // Never send a password in clear text because an HTTPS registry said so.
    if (creds && this.base.startsWith("https:") && tokenUrl.protocol !== "https:") {
      throw new KindlingError(
        `${this.where} names a token server over plain HTTP (${realm}); refusing to send credentials`,
      );
    }
    // An identity token (docker's OAuth2 refresh token) is exchanged by POST; a password goes as Basic.
    const form = creds?.identityToken ? refreshForm(creds.identityToken, ch, scopes) : undefined;
    if (creds && !form) headers.authorization = basic(creds);
    if (form) headers["content-type"] = "application/x-www-form-urlencoded";
    let lastErr = "";
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      if (attempt > 1) await sleep(backoffMs(attempt), signal);
      const timeout = AbortSignal.timeout(this.timeoutMs);
      let res: Response;
      try {
        res = await fetch(tokenUrl, {
          method: form ? "POST" : "GET",
          body: form,
          headers,
          signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        });
      } catch (err) {
        if (signal?.aborted) throw signal.reason ?? err;
        const failure = networkFailure(err, tokenUrl.origin);
        if (failure.permanent) throw new KindlingError(`token server for ${this.where}: ${failure.message}`);
        lastErr = timeout.aborted ? "timed out" : failure.message;
        continue;
      }
      if (RETRY_STATUS.has(res.status)) {
        await res.body?.cancel();
        lastErr = `status ${res.status}`;
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        await res.body?.cancel();
        throw new KindlingError(
          `token server ${tokenUrl.origin} for ${this.where} returned ${res.status}: check credentials` +
            (creds
              ? ` (from ${creds.source})`
              : ` (none were found for ${this.registry}, searched ${this.searched.join(", ")}; anonymous access was refused)`),
        );
      }
      if (!res.ok) {
        await res.body?.cancel();
        throw new KindlingError(`token server ${tokenUrl.origin} for ${this.where} returned ${res.status}`);
      }
      const token = parseTokenResponse(await res.json().catch(() => undefined));
      if (!token) throw new KindlingError(`token server ${tokenUrl.origin} for ${this.where} sent no token`);
      return token;
    }
    throw new KindlingError(`token server ${tokenUrl.origin} for ${this.where} failed: ${lastErr}`);
  }
}

/** The OAuth2 refresh-token grant docker sends for an identity token. */
function refreshForm(token: string, ch: Challenge, scopes: Set<string>): string {
  const form = new URLSearchParams({
    grant_type: "refresh_token",
    refresh_token: token,
    client_id: "kindling",
    service: ch.params.service ?? "",
  });
  if (scopes.size > 0) form.set("scope", [...scopes].join(" "));
  return form.toString();
}

function basic(creds: Credentials): string {
  return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString("base64")}`;
}

/** Reads and drops a body so the connection can be reused. */
export async function discard(reply: Reply): Promise<void> {
  try {
    await reply.res.body?.cancel();
  } finally {
    reply.done();
  }
}

/** The registry's JSON error ("MANIFEST_INVALID: manifest invalid: http: request body too large"). */
async function errorDetail(reply: Reply): Promise<{ text: string; codes: string[] }> {
  try {
    const raw = (await reply.res.text()).slice(0, 2000);
    try {
      const body = JSON.parse(raw) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
      const errors = body.errors ?? [];
      const msgs = errors.map((e) =>
        [e.code, e.message, typeof e.detail === "string" ? e.detail.trim() : undefined]
          .filter(Boolean)
          .join(": "),
      );
      if (msgs.length > 0) return { text: ` (${msgs.join("; ")})`, codes: errors.map((e) => e.code ?? "") };
    } catch {
      // not JSON
    }
    return { text: raw.trim() ? ` (${raw.trim().slice(0, 200)})` : "", codes: [] };
  } catch {
    return { text: "", codes: [] };
  } finally {
    reply.done();
  }
}

/** Certificate problems: retrying cannot fix them. */
const CERT_ERRORS =
  /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|ERR_TLS_CERT_ALTNAME_INVALID|HOSTNAME_MISMATCH/;

/** Says why a connection failed; `permanent` when retrying cannot help (TLS mismatch, certificates). */
function networkFailure(err: unknown, base: string): { message: string; permanent: boolean } {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const code = cause?.code ?? cause?.message ?? (err as Error).message;
  const text = `${code} ${cause?.message ?? ""}`;
  if (base.startsWith("https:") && CERT_ERRORS.test(text)) {
    return {
      message: `cannot reach ${base}: its TLS certificate is not trusted (${code}); add its CA to NODE_EXTRA_CA_CERTS`,
      permanent: true,
    };
  }
  // An HTTPS client talking to an HTTP registry sees a TLS protocol error.
  if (base.startsWith("https:") && /EPROTO|SSL|TLS|wrong version/i.test(text)) {
    return {
      message: `cannot reach ${base}: ${code} (is it a plain-HTTP registry? use --insecure)`,
      permanent: true,
    };
  }
  return { message: `cannot reach ${base}: ${code}`, permanent: /bad port/.test(text) };
}

function backoffMs(attempt: number): number {
  return Math.min(200 * 2 ** (attempt - 2), 5000) * (0.75 + Math.random() / 2);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
