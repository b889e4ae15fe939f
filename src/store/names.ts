import { KindlingError } from "../util/errors.js";

/**
 * The grammar of image names: an OCI/Docker image reference as distribution/reference defines it,
 *   [HOST[:PORT]/]COMPONENT[/COMPONENT...][:TAG][@sha256:HEX]
 * with lowercase path components (letters, digits, and ".", "_", "__" or "-" between them), a HOST
 * of DNS labels (recognised as one only if it has a "." or a ":" or is "localhost", as docker does),
 * a tag of at most 128 word characters, dots and dashes. So a name never holds a newline, "..", an
 * empty component, or starts with "/" or "./": `kindling run ./x` is always a path, `x` a name.
 * Every image that enters the catalog (import, pull, save) is held to it.
 */
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const HOST =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const MAX_NAME = 255;

/** Why `name` is not a valid image name, or null if it is. */
export function imageNameProblem(name: string): string | null {
  if (name === "") return "it is empty";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
  if (/[\u0000-\u001f\u007f\s]/.test(name)) return "it contains white space or a control character";
  if (name.startsWith("/")) return "it starts with / (that is a path, not a name)";
  if (name.split("/").some((c) => c === "." || c === ".."))
    return 'it has a "." or ".." component (that is a path, not a name)';
  let rest = name;
  const at = rest.indexOf("@");
  if (at >= 0) {
    if (!DIGEST.test(rest.slice(at + 1))) return "the part after @ is not sha256:<64 hex digits>";
    rest = rest.slice(0, at);
  }
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    if (!TAG.test(rest.slice(colon + 1))) return `the tag "${rest.slice(colon + 1)}" is not valid`;
    rest = rest.slice(0, colon);
  }
  if (rest.length > MAX_NAME) return `it is longer than ${MAX_NAME} characters`;
  const parts = rest.split("/");
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes(".") || first.includes(":") || first === "localhost")) {
    if (!HOST.test(first)) return `"${first}" is not a valid registry host`;
    parts.shift();
  }
  for (const p of parts) {
    if (!COMPONENT.test(p)) {
      return p === ""
        ? "it has an empty path component (a leading, trailing or doubled /)"
        : `"${p}" is not a valid path component (lowercase letters and digits, separated by ".", "_", "__" or "-")`;
    }
  }
  return null;
}

/** Throws a one-line KindlingError unless `name` is a valid image name. */
export function checkImageName(name: string, what = "image name"): string {
  const problem = imageNameProblem(name);
  if (problem) throw new KindlingError(`${what} ${JSON.stringify(name)} is not valid: ${problem}`);
  return name;
}
