/**
 * bin/kindling's entry: the thin path (thin.ts) for plain `run` and `ps`, else the full CLI (main.ts).
 * Arguments as the bytes given (src/util/bytestring.ts), as main.ts reads them.
 */
import { rawArgv } from "../util/bytestring.js";
import { runThin } from "./thin.js";

if (!(await runThin(rawArgv().slice(2)))) await import("./main.js");
