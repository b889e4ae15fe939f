import cliProgress from "cli-progress";

/** Progress of one task in bytes: a bar on a terminal, a few plain lines otherwise. */
export interface Progress {
  update(done: number): void;
  done(message?: string): void;
}

export function progress(
  label: string,
  total: number,
  stream: NodeJS.WriteStream = process.stderr,
): Progress {
  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: `${label} [{bar}] {percentage}% {value}/{total} MB`,
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    const mb = (n: number) => Math.round(n / 1e6);
    bar.start(Math.max(mb(total), 1), 0);
    return {
      update: (done) => bar.update(mb(done)),
      done: (message) => {
        bar.update(Math.max(mb(total), 1));
        bar.stop();
        if (message) stream.write(`${message}\n`);
      },
    };
  }
  // Not a terminal: print at most every 25%, so logs stay short.
  let nextQuarter = 1;
  stream.write(`${label}: ${fmtBytes(total)}\n`);
  return {
    update: (done) => {
      if (total > 0 && done / total >= nextQuarter / 4 && nextQuarter < 4) {
        stream.write(`${label}: ${Math.floor((done / total) * 100)}%\n`);
        nextQuarter = Math.floor((done / total) * 4) + 1;
      }
    },
    done: (message) => stream.write(`${label}: done${message ? ` (${message})` : ""}\n`),
  };
}

export function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
