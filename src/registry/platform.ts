import { KindlingError } from "../util/errors.js";

/** An OCI platform: "linux/arm64/v8". */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** Node's process.arch -> GOARCH, the names image indexes use. */
const GOARCH: Record<string, string> = {
  x64: "amd64",
  arm64: "arm64",
  arm: "arm",
  ia32: "386",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
  loong64: "loong64",
  mips: "mips",
  mipsel: "mipsle",
};

/** The host's platform, as `docker pull` defaults to it. */
export function hostPlatform(): Platform {
  const architecture = GOARCH[process.arch] ?? process.arch;
  if (architecture === "arm") {
    const v = (process.config.variables as { arm_version?: string }).arm_version;
    return { os: "linux", architecture, variant: v ? `v${v}` : "v7" };
  }
  return { os: "linux", architecture };
}

const PART = /^[a-z0-9_.-]+$/;

/** "os/arch[/variant]"; arch aliases normalized as containerd does (x86_64 -> amd64, aarch64 -> arm64). */
export function parsePlatform(text: string): Platform {
  const parts = text.trim().toLowerCase().split("/");
  if (parts.length < 2 || parts.length > 3 || !parts.every((p) => PART.test(p))) {
    throw new KindlingError(`invalid platform "${text}": expected os/arch[/variant], e.g. linux/arm64`);
  }
  const [os, arch, variant] = parts as [string, string, string | undefined];
  const alias: Record<string, string> = {
    x86_64: "amd64",
    "x86-64": "amd64",
    aarch64: "arm64",
    armhf: "arm",
    i386: "386",
  };
  return { os, architecture: alias[arch] ?? arch, ...(variant ? { variant } : {}) };
}

export function formatPlatform(p: { os?: string; architecture?: string; variant?: string }): string {
  return `${p.os ?? "?"}/${p.architecture ?? "?"}${p.variant ? `/${p.variant}` : ""}`;
}

/** The variant an index may leave out: arm64 means v8, amd64 means v1. */
export function baseline(p: { architecture?: string; variant?: string }): string | undefined {
  if (p.variant) return p.variant;
  if (p.architecture === "arm64") return "v8";
  if (p.architecture === "amd64") return "v1";
  return undefined;
}

/** Whether an index entry's platform serves `want` (a wanted variant must match; none accepts any). */
export function platformMatches(
  have: { os?: string; architecture?: string; variant?: string } | undefined,
  want: Platform,
): boolean {
  if (!have || have.os !== want.os || have.architecture !== want.architecture) return false;
  if (!want.variant) return true;
  return baseline(have) === baseline(want);
}
