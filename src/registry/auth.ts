/** One challenge from a WWW-Authenticate header: `Bearer realm="...",service="...",scope="..."`. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/**
 * Parses a WWW-Authenticate value, which may hold several challenges (fetch joins repeated headers
 * with ", "). Scheme names are lowercased; parameter values are unquoted.
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skip = (re: RegExp) => {
    while (i < n && re.test(header[i]!)) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && /[!#$%&'*+.^_`|~0-9A-Za-z-]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  let current: Challenge | undefined;
  while (i < n) {
    skip(/[\s,]/);
    const start = i;
    const name = token();
    if (name === "") {
      i++; // stray character: skip it rather than loop forever
      continue;
    }
    skip(/\s/);
    if (header[i] === "=" && current) {
      i++;
      skip(/\s/);
      let value: string;
      if (header[i] === '"') {
        i++;
        value = "";
        while (i < n && header[i] !== '"') {
          if (header[i] === "\\" && i + 1 < n) i++;
          value += header[i++];
        }
        i++; // closing quote
      } else {
        value = token();
      }
      current.params[name.toLowerCase()] = value;
    } else {
      // A token not followed by "=" starts a new challenge (token68 forms are not used by registries).
      i = start + name.length;
      current = { scheme: name.toLowerCase(), params: {} };
      out.push(current);
    }
  }
  return out;
}

/** A bearer token and when to stop using it. */
export interface Token {
  token: string;
  expiresAt: number;
}

/** The token endpoint's answer (docker token spec; OAuth2 servers say access_token). */
export function parseTokenResponse(body: unknown, now = Date.now()): Token | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const b = body as { token?: unknown; access_token?: unknown; expires_in?: unknown };
  const token = typeof b.token === "string" && b.token ? b.token : b.access_token;
  if (typeof token !== "string" || token === "") return undefined;
  // Spec default lifetime is 60 s; renew a little early.
  const ttl = typeof b.expires_in === "number" && b.expires_in > 0 ? b.expires_in : 60;
  return { token, expiresAt: now + Math.max(ttl - 10, 5) * 1000 };
}
