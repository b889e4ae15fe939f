/** An error meant for the user: its message names the problem; the CLI prints it without a stack. */
export class KindlingError extends Error {
  constructor(
    message: string,
    readonly code = "EKINDLING",
  ) {
    super(message);
    this.name = "KindlingError";
  }
}

/** Exit status used when Kindling itself fails (as docker/podman do), apart from the container's own status. */
export const EXIT_KINDLING_FAILURE = 125;

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
