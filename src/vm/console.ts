/** Reading a guest's serial console file (both backends write it to a file in the VM's state dir). */
import { readFile } from "node:fs/promises";

/** The console's "Kernel panic - ..." line, if the guest kernel panicked (its trace follows it). */
export async function consolePanicLine(consoleLog: string): Promise<string | undefined> {
  const text = await readFile(consoleLog, "latin1").catch(() => "");
  return /Kernel panic[^\r\n]*/.exec(text)?.[0];
}
