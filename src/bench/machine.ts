/** The machine a bench ran on, for the report (CPU, cores, memory, kernel, accelerator). */
import { access } from "node:fs/promises";
import os from "node:os";
import { cpuinfo } from "../host/proc.js";

export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** Whether /dev/kvm exists (here it is PVM, which stock guests cannot use: VMs run under TCG). */
  kvmDevice: boolean;
  /** 1/5/15-minute load averages when the report was written (the machine is shared: noisy). */
  loadAvg: number[];
}

export async function machineInfo(): Promise<MachineInfo> {
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo())?.[1]?.trim() ?? "unknown";
  const kvmDevice = await access("/dev/kvm").then(
    () => true,
    () => false,
  );
  return {
    cpu: model,
    cores: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    kvmDevice,
    loadAvg: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

export function describeMachine(m: MachineInfo): string {
  return (
    `${m.cpu}, ${m.cores} cores (nproc), ${m.memoryGiB} GiB RAM, ${m.kernel}, Node ${m.node}, ` +
    `load average ${m.loadAvg.join(" / ")} at the end of the run`
  );
}
