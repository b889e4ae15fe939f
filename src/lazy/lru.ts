/** A map of buffers bounded by total bytes; the least recently used go first. */
export class ByteLru<K> {
  private readonly map = new Map<K, Buffer>();
  private bytes = 0;
  constructor(private readonly maxBytes: number) {}

  /** Whether key is cached (without making it recent). */
  has(key: K): boolean {
    return this.map.has(key);
  }

  get(key: K): Buffer | undefined {
    const v = this.map.get(key);
    if (v) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: K, value: Buffer): void {
    if (value.length > this.maxBytes) return;
    const old = this.map.get(key);
    if (old) {
      this.bytes -= old.length;
      this.map.delete(key);
    }
    this.map.set(key, value);
    this.bytes += value.length;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.maxBytes) break;
      this.map.delete(k);
      this.bytes -= v.length;
    }
  }
}
