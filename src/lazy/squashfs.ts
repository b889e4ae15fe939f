/** The part of a SquashFS 4.0 superblock that says where its metadata tables are. */
export interface SquashfsLayout {
  bytesUsed: number;
  /** Lowest start of the inode, directory, fragment, export, id and xattr tables. */
  tablesStart: number;
}

const MAGIC = 0x73717368; // "hsqs" little-endian
const ABSENT = 0xffffffffffffffffn;

/**
 * Parses the 96-byte superblock. Everything a mount and a first `ls` read besides data blocks
 * lives in [tablesStart, bytesUsed): the tables follow the data blocks in every SquashFS image.
 */
export function parseSquashfsSuperblock(buf: Buffer): SquashfsLayout | null {
  if (buf.length < 96 || buf.readUInt32LE(0) !== MAGIC) return null;
  if (buf.readUInt16LE(28) !== 4) return null;
  const bytesUsed = Number(buf.readBigUInt64LE(40));
  // id_table 48, xattr_id_table 56, inode_table 64, directory_table 72, fragment_table 80, export 88.
  let tablesStart = bytesUsed;
  for (const off of [48, 56, 64, 72, 80, 88]) {
    const v = buf.readBigUInt64LE(off);
    if (v !== ABSENT && v < BigInt(tablesStart)) tablesStart = Number(v);
  }
  return { bytesUsed, tablesStart };
}
