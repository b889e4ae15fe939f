/** The catalog's record types live with the catalog (src/store); re-exported for image code. */
export type { ImageOrigin, ImageRecord, RunConfig } from "../store/types.js";
