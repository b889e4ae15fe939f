import { readFile } from "node:fs/promises";

/**
 * A small JSON file a home keeps beside an image (its startup profile, its packs list), parsed but
 * unchecked: undefined when there is none, `{ corrupt: true }` when it is not JSON (the caller's check
 * then names what is wrong, and the file is ignored with a warning).
 */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    return { corrupt: true };
  }
}
