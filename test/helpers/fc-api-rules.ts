/**
 * The Firecracker test double's own view of the API: what firecracker v1.16.1 accepts, read by code that
 * shares nothing with Kindling's side (test/helpers/firecracker-schema.ts reads the schema with js-yaml
 * and validates with ajv). Here the Swagger document is parsed with `yaml`, bodies are validated with
 * `jsonschema`, routes are matched by hand, and serde's deny_unknown_fields is a walk of our own. A
 * conversion bug in one path therefore does not hide in the other.
 *
 * The semantic checks below are what Firecracker does beyond its schema; each names its source
 * (docs/firecracker.md lists them all).
 */
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { Validator } from "jsonschema";
import { parse } from "yaml";

type Body = Record<string, unknown>;
type Schema = Record<string, unknown>;

/** The schema file the double reads: $FAKE_FC_SCHEMA, else <repo>/../shared/firecracker/. Exits if missing. */
export function doubleSchemaFile(repoRoot: string): string {
  const file =
    process.env.FAKE_FC_SCHEMA ??
    process.env.KINDLING_FIRECRACKER_SCHEMA ??
    path.join(repoRoot, "..", "shared", "firecracker", "firecracker-v1.16.1.yaml");
  if (!existsSync(file)) {
    throw new Error(
      `the Firecracker test double needs the API schema ${file} (../shared/firecracker beside the repository, or $FAKE_FC_SCHEMA)`,
    );
  }
  return file;
}

export class DoubleApi {
  private readonly validator = new Validator();
  private readonly definitions: Record<string, Schema>;
  /** [method, path regexp, definition] for every operation that takes a body */
  private readonly ops: [string, RegExp, string][] = [];

  constructor(file: string) {
    const doc = parse(readFileSync(file, "utf8")) as {
      paths: Record<string, Record<string, { parameters?: { in: string; schema?: { $ref?: string } }[] }>>;
      definitions: Record<string, Schema>;
    };
    this.definitions = doc.definitions;
    // jsonschema resolves "#/definitions/X" against the schema it was given: register the whole set once.
    this.validator.addSchema({ id: "/fc", definitions: doc.definitions } as never, "/fc");
    for (const [template, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        const ref = op.parameters?.find((p) => p.in === "body")?.schema?.$ref;
        if (!ref) continue;
        const re = new RegExp(
          `^${template
            .split("/")
            .map((seg) => (seg.startsWith("{") ? "[^/]+" : seg.replace(/[-.]/g, "\\$&")))
            .join("/")}$`,
        );
        this.ops.push([method.toUpperCase(), re, ref.split("/").pop()!]);
      }
    }
  }

  /** The definition a body-taking request must match, or undefined if the API has no such operation. */
  definitionFor(method: string, url: string): string | undefined {
    return this.ops.find(([m, re]) => m === method && re.test(url))?.[2];
  }

  /** Schema errors of `value` against definitions/<name>, plus fields serde would refuse as unknown. */
  check(definition: string, value: unknown): string[] {
    const schema = { $ref: `/fc#/definitions/${definition}` };
    const errors = this.validator
      .validate(value, schema as never, { nestedErrors: false })
      .errors.map((e) => `${e.property.replace(/^instance/, "") || "(body)"} ${e.message}`);
    return [...errors, ...this.unknownFields(this.definitions[definition], value, "")];
  }

  /** Firecracker's request structs carry #[serde(deny_unknown_fields)] (src/vmm/src/vmm_config/*.rs). */
  private unknownFields(def: Schema | undefined, value: unknown, at: string): string[] {
    if (!def || typeof value !== "object" || value === null || Array.isArray(value)) return [];
    const props = def.properties as Record<string, Schema> | undefined;
    if (!props) return [];
    const out: string[] = [];
    for (const [k, v] of Object.entries(value as Body)) {
      const prop = props[k];
      if (!prop) {
        out.push(`${at}/${k} is an unknown field`);
        continue;
      }
      const ref = (prop.$ref ?? (prop.items as Schema | undefined)?.$ref) as string | undefined;
      if (!ref) continue;
      const sub = this.definitions[ref.split("/").pop()!];
      if (Array.isArray(v))
        for (const [i, item] of v.entries()) out.push(...this.unknownFields(sub, item, `${at}/${k}/${i}`));
      else out.push(...this.unknownFields(sub, v, `${at}/${k}`));
    }
    return out;
  }
}

// ---- Firecracker's checks beyond the schema (v1.16.1). Each returns the fault message, or undefined.

/** src/utils/src/validators.rs validate_instance_id: 1-64 chars, alphanumeric or '-'. */
export function checkInstanceId(id: string): string | undefined {
  if (id.length < 1 || id.length > 64) return `Invalid instance ID: invalid len (${id.length})`;
  if (!/^[A-Za-z0-9-]+$/.test(id)) return "Invalid instance ID: invalid char";
  return undefined;
}

/** src/firecracker/src/api_server/parsed_request.rs checked_id: non-empty, alphanumeric or '_'. */
export function checkResourceId(id: string): string | undefined {
  if (id === "") return "The ID cannot be empty.";
  if (!/^[A-Za-z0-9_]+$/.test(id))
    return "API Resource IDs can only contain alphanumeric characters and underscores.";
  return undefined;
}

/** request/drive.rs parse_put_drive, request/net.rs parse_put_net: the path's id must be the body's. */
export function checkPathId(pathId: string, bodyId: unknown): string | undefined {
  return (
    checkResourceId(pathId) ??
    (pathId !== bodyId ? "The id from the path does not match the id from the body!" : undefined)
  );
}

/**
 * src/vmm/src/vmm_config/machine_config.rs VmConfig::update: 1 <= vcpu_count <= MAX_SUPPORTED_VCPUS (32),
 * with smt only 1 or an even count; mem_size_mib > 0 and a multiple of 2 with huge_pages "2M".
 */
export function checkMachineConfig(b: Body): string | undefined {
  const vcpus = b.vcpu_count as number;
  if (vcpus < 1 || vcpus > 32 || (b.smt === true && vcpus > 1 && vcpus % 2 === 1))
    return "The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.";
  const mem = b.mem_size_mib as number;
  if (mem <= 0 || (b.huge_pages === "2M" && mem % 2 !== 0))
    return "The memory size (MiB) is either 0, or not a multiple of the configured page size.";
  return undefined;
}

/**
 * src/vmm/src/vmm_config/drive.rs BlockBuilder::insert: at most one root device (re-putting the root
 * itself is an update); create_block: path_on_host must exist.
 */
export function checkDrive(b: Body, drives: Map<string, Body>): string | undefined {
  if (b.is_root_device === true) {
    for (const [id, d] of drives) {
      if (d.is_root_device === true && id !== b.drive_id) return "A root block device already exists!";
    }
  }
  if (typeof b.path_on_host === "string" && !existsSync(b.path_on_host))
    return `Invalid block device path: ${b.path_on_host}`;
  return undefined;
}

/**
 * src/vmm/src/vmm_config/net.rs NetworkInterfaceConfigs::insert: no other interface may have the same
 * host_dev_name or guest_mac; open_tap: the TAP device must exist.
 */
export function checkNetworkInterface(b: Body, ifaces: Map<string, Body>): string | undefined {
  for (const [id, other] of ifaces) {
    if (id === b.iface_id) continue;
    if (other.host_dev_name === b.host_dev_name)
      return `The host device name ${b.host_dev_name} is already in use.`;
    if (other.guest_mac !== undefined && other.guest_mac === b.guest_mac)
      return `The guest MAC address ${b.guest_mac} is already in use.`;
  }
  // /proc/self/net/dev lists the devices of our own network namespace (the VMM runs in the run's netns;
  // /sys/class/net would show the namespace sysfs was mounted in)
  const devs = readFileSync("/proc/self/net/dev", "utf8")
    .split("\n")
    .map((l) => l.split(":")[0].trim());
  if (!devs.includes(b.host_dev_name as string)) return "Cannot open TAP device. Invalid name/permissions.";
  return undefined;
}

/** src/vmm/src/vmm_config/boot_source.rs: the kernel (and initrd) must open. */
export function checkBootSource(b: Body): string | undefined {
  if (!existsSync(b.kernel_image_path as string))
    return "Kernel file cannot be opened: No such file or directory (os error 2)";
  if (b.initrd_path !== undefined && !existsSync(b.initrd_path as string))
    return "Initrd file cannot be opened: No such file or directory (os error 2)";
  return undefined;
}
