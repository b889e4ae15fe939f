/**
 * A seccomp filter in the spirit of Docker's default profile, as a blocklist: most of what it
 * denies needs capabilities Kindling does not grant anyway, but some calls need none and would
 * let a process widen its reach (a new user namespace gives it every capability inside; keyrings
 * and userfaultfd are common exploit helpers). runc applies it; runsc has its own kernel and
 * ignores it (unless started with --oci-seccomp).
 */
export interface OciSeccomp {
  defaultAction: "SCMP_ACT_ALLOW";
  architectures: string[];
  syscalls: {
    names: string[];
    action: "SCMP_ACT_ERRNO";
    errnoRet: number;
    args?: { index: number; value: number; valueTwo: number; op: "SCMP_CMP_MASKED_EQ" }[];
  }[];
}

const EPERM = 1;
const ENOSYS = 38;

/** Calls no container needs, denied with EPERM. */
const DENIED = [
  "acct",
  "add_key",
  "bpf",
  "create_module",
  "delete_module",
  "finit_module",
  "fsconfig",
  "fsmount",
  "fsopen",
  "fspick",
  "get_kernel_syms",
  "init_module",
  "ioperm",
  "iopl",
  "kexec_file_load",
  "kexec_load",
  "keyctl",
  "lookup_dcookie",
  "move_mount",
  "name_to_handle_at",
  "nfsservctl",
  "open_by_handle_at",
  "open_tree",
  "perf_event_open",
  "pivot_root",
  "quotactl",
  "reboot",
  "request_key",
  "setns",
  "swapoff",
  "swapon",
  "sysfs",
  "_sysctl",
  "unshare",
  "uselib",
  "userfaultfd",
  "ustat",
  "vm86",
  "vm86old",
];

/** clone() flags that make new namespaces (CLONE_NEWNS ... CLONE_NEWCGROUP, CLONE_NEWTIME). */
const NAMESPACE_FLAGS = [
  0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80,
];

export function defaultSeccomp(): OciSeccomp {
  return {
    defaultAction: "SCMP_ACT_ALLOW",
    architectures: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    syscalls: [
      { names: DENIED, action: "SCMP_ACT_ERRNO", errnoRet: EPERM },
      // One rule per flag: the rule's conditions are ANDed, and "any of these bits" is not a condition.
      ...NAMESPACE_FLAGS.map((flag) => ({
        names: ["clone"],
        action: "SCMP_ACT_ERRNO" as const,
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: "SCMP_CMP_MASKED_EQ" as const }],
      })),
      // clone3 passes its flags in memory, out of the filter's sight: ENOSYS makes libc use clone.
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
    ],
  };
}
