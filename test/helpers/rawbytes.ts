import { spawn } from "node:child_process";

/**
 * Runs `kindling ARGS` through bash so that arguments can hold bytes that are not UTF-8 (Node's
 * spawn encodes its string arguments as UTF-8): `$'\xff'` in `script` is the byte 0xff. Returns
 * stdout as bytes. Bounded: killed after `timeoutMs`.
 */
export function kindlingRaw(
  bin: string,
  script: string,
  env: NodeJS.ProcessEnv,
  timeoutMs = 120_000,
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", `exec "${process.execPath}" "${bin}" ${script}`], { env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`kindling ${script}: no exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() });
    });
  });
}
