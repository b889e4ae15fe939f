/*
 * kindling-init: PID 1 and agent of a Kindling microVM. One static program, no other files needed.
 *
 * Stage 1 (from the initramfs): mount /proc /sys /dev, load the modules listed by the host, mount the
 * root drive read-only. Stage 2 (the design note's guest setup): writable layer (tmpfs or scratch disk),
 * overlay with the root as lower, switch into it. Then the agent: a framed binary protocol over a
 * virtio-serial port (QEMU) or AF_VSOCK (Firecracker) that configures mounts and runs processes.
 * The wire format is documented in docs/guest.md; keep the two in sync.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>

/* 2: START carries the supplementary groups (list<u32> after gid); 3: NETWORK (eth0, resolv.conf) and
   FAILED's step (where a START failed), SETUP (a snapshot VM's per-container boot options, clock, entropy) */
#define PROTO_VERSION 4 /* 4: START flag 2 (a pty) with its size, RESIZE */
#define HDR_LEN 12
#define MAX_PAYLOAD (1u << 20)
#define CHUNK (64u * 1024)
#define OUT_WINDOW (256u * 1024)
#define MAX_PROCS 64
#define MAX_GROUPS 64 /* supplementary groups per START (the host's limit too) */

enum {
  T_READY = 0x01, T_CONFIGURE = 0x10, T_CONFIGURED = 0x11, T_NETWORK = 0x12, T_SETUP = 0x13, T_START = 0x20, T_STARTED = 0x21,
  T_STDOUT = 0x22, T_STDERR = 0x23, T_STDIN_CREDIT = 0x24, T_EXITED = 0x25, T_STDIN = 0x26,
  T_STDIN_EOF = 0x27, T_SIGNAL = 0x28, T_OUTPUT_CREDIT = 0x29, T_RESIZE = 0x2a, T_FAILED = 0x2f, T_POWEROFF = 0x30,
};

/* ------------------------------------------------------------------ logging and small helpers */

static long uptime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every line starts with the same marker so the host can find the stage a failed boot reached. */
static void logmsg(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(buf, sizeof buf, "kindling-init: [%ld ms] ", uptime_ms());
  vsnprintf(buf + n, sizeof buf - n, fmt, ap);
  va_end(ap);
  size_t len = strlen(buf);
  if (len < sizeof buf - 1) buf[len++] = '\n';
  if (write(2, buf, len) < 0) { /* no console: nothing else to tell */ }
}

static void power_off(void) __attribute__((noreturn));

/* A setup failure: say why on the console, then end the VM (exiting PID 1 would panic the kernel). */
static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fatal(const char *fmt, ...) {
  char buf[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  logmsg("FATAL: %s", buf);
  power_off();
}

static char cmdline[4096];
/* A snapshot VM's per-container options (root, writable layer), sent in SETUP after a restore. */
static char setup_opts[2048];
static bool debug_on;
static bool halt_reboot;
/* kindling.snapshot=1: booted to be snapshotted; the root and writable layer come later, in SETUP */
static bool snapshot_mode;
static bool setup_done;

/* Value of a kindling.* option on the kernel command line (or in SETUP's options), or def. */
static const char *opt(const char *name, const char *def) {
  static char val[256];
  size_t nlen = strlen(name);
  char both[sizeof cmdline + sizeof setup_opts + 2];
  snprintf(both, sizeof both, "%s %s", cmdline, setup_opts);
  for (char *p = both; *p;) {
    while (*p == ' ' || *p == '\n') p++;
    char *end = p + strcspn(p, " \n");
    if (strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
      size_t vlen = (size_t)(end - (p + nlen + 1));
      if (vlen >= sizeof val) vlen = sizeof val - 1;
      memcpy(val, p + nlen + 1, vlen);
      val[vlen] = 0;
      return val;
    }
    p = end;
  }
  return def;
}

static void read_cmdline(void) {
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
  close(fd);
  cmdline[n > 0 ? n : 0] = 0;
  debug_on = strcmp(opt("kindling.debug", "0"), "1") == 0;
  halt_reboot = strcmp(opt("kindling.halt", "poweroff"), "reboot") == 0;
  snapshot_mode = strcmp(opt("kindling.snapshot", "0"), "1") == 0;
}

static int mkdir_p(const char *path, mode_t mode) {
  char tmp[4096];
  if (strlen(path) >= sizeof tmp) return errno = ENAMETOOLONG, -1;
  strcpy(tmp, path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -1;
  return 0;
}

static void must_mount(const char *src, const char *dst, const char *type, unsigned long fl, const char *data) {
  mkdir_p(dst, 0755);
  if (mount(src, dst, type, fl, data) < 0) fatal("mount %s on %s (%s): %s", src, dst, type, strerror(errno));
}

/* Drives appear asynchronously after their driver loads: poll for the node (devtmpfs creates it). */
static bool wait_for_path(const char *path, int timeout_ms) {
  struct stat st;
  for (int waited = 0; stat(path, &st) < 0; waited += 5) {
    if (waited >= timeout_ms) return false;
    usleep(5000);
  }
  return true;
}

/* ------------------------------------------------------------------ stage 1: modules and root */

static void load_modules(void) {
  FILE *f = fopen("/kindling/modules", "re");
  if (!f) return; /* a kernel with everything built in needs none */
  char line[512];
  int count = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    if (!line[0]) continue;
    int fd = open(line, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fatal("open module %s: %s", line, strerror(errno));
    /* EEXIST: built in or already loaded, which is what we wanted anyway. */
    if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
      fatal("load module %s: %s", line, strerror(errno));
    close(fd);
    count++;
  }
  fclose(f);
  logmsg("loaded %d modules", count);
}

/* Mount a block device trying each file system type of a comma list ("auto" = squashfs,ext4). */
static int mount_block(const char *dev, const char *dst, const char *types, unsigned long fl, const char *data) {
  char list[128];
  snprintf(list, sizeof list, "%s", strcmp(types, "auto") == 0 || !*types ? "squashfs,ext4" : types);
  int err = EINVAL;
  for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    /* squashfs is read-only by nature; the kernel refuses it rw */
    unsigned long f = strcmp(t, "squashfs") == 0 ? fl | MS_RDONLY : fl;
    if (mount(dev, dst, t, f, data) == 0) return 0;
    err = errno;
  }
  errno = err;
  return -1;
}

static void stage1_base(void) {
  logmsg("stage1: initramfs");
  must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  must_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  must_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  read_cmdline();
  load_modules();
}

static void stage1_root(void) {
  char root[256], types[64];
  snprintf(root, sizeof root, "%s", opt("kindling.root", "/dev/vda"));
  snprintf(types, sizeof types, "%s", opt("kindling.rootfstype", "auto"));
  mkdir_p("/mnt/lower", 0755);
  if (strcmp(types, "virtiofs") == 0) {
    /* kindling.root is a virtio-fs tag (the host's merged directory), not a drive */
    if (mount(root, "/mnt/lower", "virtiofs", MS_RDONLY, NULL) < 0)
      fatal("mount root virtio-fs tag %s: %s", root, strerror(errno));
  } else {
    if (!wait_for_path(root, 10000)) fatal("root drive %s did not appear", root);
    if (mount_block(root, "/mnt/lower", types, MS_RDONLY, NULL) < 0)
      fatal("mount root %s (%s): %s", root, types, strerror(errno));
  }
  logmsg("stage1: root %s mounted read-only", root);
}

/* ------------------------------------------------------------------ snapshot VMs: drives and SETUP */

/*
 * A snapshot VM must not have read its drives before the snapshot: a restored VM gets other backing files
 * (this container's image and scratch disk) behind the same devices. The kernel read each disk's size and
 * partition table when virtio_blk bound it at boot, so the init unbinds them before READY and binds them
 * again in SETUP: the new probe reads the new files' sizes, with a fresh page cache.
 */
#define MAX_DISKS 32
static char unbound[MAX_DISKS][32]; /* virtio device names ("virtio3"), in the order of their disk names */
static int n_unbound;

static bool sys_write(const char *path, const char *value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, value, strlen(value)) == (ssize_t)strlen(value);
  close(fd);
  return ok;
}

/* vda < vdb < ... < vdz < vdaa: shorter names first, as the kernel hands them out */
static int disk_order(const void *a, const void *b) {
  const char *x = (const char *)a + 16, *y = (const char *)b + 16;
  size_t lx = strlen(x), ly = strlen(y);
  return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

static void unbind_disks(void) {
  const char *drv = "/sys/bus/virtio/drivers/virtio_blk";
  DIR *d = opendir(drv);
  if (!d) return;
  char found[MAX_DISKS][48]; /* [0..15]: virtio device, [16..]: disk name */
  int n = 0;
  for (struct dirent *e; n < MAX_DISKS && (e = readdir(d));) {
    if (strncmp(e->d_name, "virtio", 6) != 0) continue;
    char path[300];
    snprintf(path, sizeof path, "%s/%s/block", drv, e->d_name);
    DIR *b = opendir(path);
    struct dirent *disk = NULL;
    while (b && (disk = readdir(b)) && disk->d_name[0] == '.') {}
    memset(found[n], 0, sizeof found[n]);
    snprintf(found[n], 16, "%.15s", e->d_name);
    snprintf(found[n] + 16, 32, "%.31s", disk ? disk->d_name : "");
    n++;
    if (b) closedir(b);
  }
  closedir(d);
  qsort(found, (size_t)n, sizeof found[0], disk_order);
  char path[300];
  snprintf(path, sizeof path, "%s/unbind", drv);
  for (int i = 0; i < n; i++) {
    if (!sys_write(path, found[i])) fatal("unbind %.15s from virtio_blk: %s", found[i], strerror(errno));
    snprintf(unbound[n_unbound++], sizeof unbound[0], "%.15s", found[i]);
  }
  logmsg("snapshot: %d drives released until SETUP", n);
}

static int bind_disks(char *msg, size_t size) {
  for (int i = 0; i < n_unbound; i++) {
    if (!sys_write("/sys/bus/virtio/drivers/virtio_blk/bind", unbound[i])) {
      int err = errno;
      snprintf(msg, size, "bind %.31s to virtio_blk: %s", unbound[i], strerror(err));
      return err;
    }
  }
  return 0;
}

/* The host's bytes into the input pool (credited), then a reseed: every restored VM's RNG differs. */
static int reseed_rng(const uint8_t *seed, size_t len, char *msg, size_t size) {
  if (len == 0) return 0;
  struct { struct rand_pool_info info; uint8_t buf[256]; } e;
  if (len > sizeof e.buf) len = sizeof e.buf;
  e.info.entropy_count = (int)(len * 8);
  e.info.buf_size = (int)len;
  memcpy(e.buf, seed, len);
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  int err = fd < 0 || ioctl(fd, RNDADDENTROPY, &e) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0 ? errno : 0;
  if (fd >= 0) close(fd);
  explicit_bzero(&e, sizeof e);
  if (err) snprintf(msg, size, "reseed the RNG: %s", strerror(err));
  return err;
}

/* ------------------------------------------------------------------ stage 2: overlay and switch */

/* The writable layer: tmpfs with an optional size limit, or an ext4 scratch drive. */
static void mount_writable(const char *dir) {
  const char *scratch = opt("kindling.scratch", "");
  if (*scratch) {
    if (!wait_for_path(scratch, 10000)) fatal("scratch drive %s did not appear", scratch);
    must_mount(scratch, dir, "ext4", MS_NOATIME, NULL);
  } else {
    char data[96] = "mode=0755";
    const char *size = opt("kindling.tmpfs_size", "");
    if (*size) snprintf(data, sizeof data, "mode=0755,size=%s", size);
    must_mount("tmpfs", dir, "tmpfs", 0, data);
  }
  char upper[256], work[256];
  snprintf(upper, sizeof upper, "%s/upper", dir);
  snprintf(work, sizeof work, "%s/work", dir);
  if (mkdir_p(upper, 0755) < 0 || mkdir_p(work, 0755) < 0) fatal("mkdir in %s: %s", dir, strerror(errno));
}

static void mount_overlay(const char *lower, const char *rw, const char *merged) {
  char data[1024];
  snprintf(data, sizeof data, "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, rw, rw);
  must_mount("overlay", merged, "overlay", 0, data);
}

static void move_to(const char *from, const char *to) {
  mkdir_p(to, 0755);
  if (mount(from, to, NULL, MS_MOVE, NULL) < 0) fatal("move %s to %s: %s", from, to, strerror(errno));
}

/* Free the initramfs' memory: delete its files, not crossing into other mounts (like switch_root). */
static void remove_tree(int dirfd, dev_t rootdev) {
  DIR *d = fdopendir(dirfd);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    struct stat st;
    if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != rootdev) continue;
    if (S_ISDIR(st.st_mode)) {
      int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (sub >= 0) remove_tree(sub, rootdev);
      unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
    } else {
      unlinkat(dirfd, e->d_name, 0);
    }
  }
  closedir(d);
}

/*
 * From an initramfs: pivot_root(2) refuses the kernel's rootfs as the current root (it is a mount without
 * a parent: EINVAL). Bind the initramfs recursively (the overlay and /proc /sys /dev come along) onto a
 * directory of itself and chroot there: that root is a mount with a parent, so the note's pivot_root
 * works from it. The initramfs files are deleted first: rootfs itself can never be unmounted.
 */
static void enter_bound_initramfs(void) {
  struct stat st;
  if (stat("/", &st) == 0) remove_tree(open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC), st.st_dev);
  mkdir_p("/initramfs", 0755);
  if (mount("/", "/initramfs", NULL, MS_BIND | MS_REC, NULL) < 0 || chroot("/initramfs") < 0 || chdir("/") < 0)
    fatal("bind the initramfs for pivot_root: %s", strerror(errno));
}

/* Root mounted by the kernel (no initramfs): the design note's pivot_root, then detach the old root. */
static void pivot_into(const char *newroot) {
  char old[300];
  snprintf(old, sizeof old, "%.256s/.oldroot", newroot);
  mkdir_p(old, 0700);
  if (chdir(newroot) < 0 || syscall(SYS_pivot_root, ".", ".oldroot") < 0 || chroot(".") < 0 || chdir("/") < 0)
    fatal("pivot_root into %s: %s", newroot, strerror(errno));
  move_to("/.oldroot/proc", "/proc");
  move_to("/.oldroot/sys", "/sys");
  move_to("/.oldroot/dev", "/dev");
  if (umount2("/.oldroot", MNT_DETACH) < 0) logmsg("detach old root: %s", strerror(errno));
  rmdir("/.oldroot");
}

static bool root_is_initramfs(void) {
  struct statfs sf;
  return statfs("/", &sf) == 0 && (sf.f_type == RAMFS_MAGIC || sf.f_type == TMPFS_MAGIC);
}

static void loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
    logmsg("loopback: %s", strerror(errno));
  } else {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) logmsg("loopback up: %s", strerror(errno));
  }
  if (s >= 0) close(s);
}

/* A snapshot VM did the root-independent part of stage 2 before its snapshot (prepare_early_stage2). */
static bool early_stage2;

static void stage2(bool from_initramfs) {
  logmsg("stage2: overlay (%s)", *opt("kindling.scratch", "") ? "scratch disk" : "tmpfs");
  if (from_initramfs) {
    mount_writable("/mnt/rw");
    mount_overlay("/mnt/lower", "/mnt/rw", "/mnt/root");
    if (!early_stage2) enter_bound_initramfs();
    pivot_into("/mnt/root");
  } else {
    /* The root is read-only: a small tmpfs gives us somewhere to create the mount points. */
    const char *stage = access("/mnt", F_OK) == 0 ? "/mnt" : "/tmp";
    must_mount("tmpfs", stage, "tmpfs", 0, "mode=0755,size=1m");
    char rw[256], merged[256];
    snprintf(rw, sizeof rw, "%s/rw", stage);
    snprintf(merged, sizeof merged, "%s/root", stage);
    mkdir_p(rw, 0755);
    mkdir_p(merged, 0755);
    mount_writable(rw);
    mount_overlay("/", rw, merged);
    pivot_into(merged);
  }
  mkdir_p("/dev/pts", 0755);
  mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
  mkdir_p("/dev/shm", 01777);
  mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  if (!early_stage2) loopback_up();
  logmsg("stage2: root is the overlay");
}

/* ------------------------------------------------------------------ the channel and framing */

static int chan = -1;
static bool host_spoke; /* the host has sent a frame: stop repeating READY */

static void write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      poll(&pfd, 1, 100);
      continue;
    }
    if (n <= 0) {
      logmsg("channel write failed: %s", strerror(errno));
      power_off();
    }
    p += n;
    len -= (size_t)n;
  }
}

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = v & 0xff, p[1] = (v >> 8) & 0xff, p[2] = (v >> 16) & 0xff, p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One frame, header and payload in a single write so frames never interleave. */
static void send_frame(uint8_t type, uint32_t id, const void *payload, size_t len) {
  static uint8_t buf[HDR_LEN + CHUNK + 64];
  if (len > CHUNK + 64) len = CHUNK + 64;
  put_u32(buf, (uint32_t)len);
  buf[4] = PROTO_VERSION;
  buf[5] = type;
  buf[6] = buf[7] = 0;
  put_u32(buf + 8, id);
  if (len) memcpy(buf + HDR_LEN, payload, len);
  write_all(chan, buf, HDR_LEN + len);
}

/* A payload of u32s and byte strings (u32 length + bytes). */
struct out { uint8_t data[1024]; size_t len; };
static void out_u32(struct out *o, uint32_t v) {
  if (o->len + 4 <= sizeof o->data) put_u32(o->data + o->len, v), o->len += 4;
}
static void out_bytes(struct out *o, const char *s) {
  size_t n = strlen(s);
  if (n > sizeof o->data - o->len - 4) n = sizeof o->data - o->len - 4;
  out_u32(o, (uint32_t)n);
  memcpy(o->data + o->len, s, n);
  o->len += n;
}

/* FAILED's step: where a START failed (0: before the child ran, e.g. fork, pipes, a refused START). */
enum { STEP_NONE = 0, STEP_STDIO = 1, STEP_CHDIR = 2, STEP_CREDENTIALS = 3, STEP_EXEC = 4 };

static void send_failed_at(uint32_t id, int err, uint32_t step, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct out o = {.len = 0};
  out_u32(&o, (uint32_t)err);
  out_bytes(&o, msg);
  out_u32(&o, step);
  send_frame(T_FAILED, id, o.data, o.len);
}
#define send_failed(id, err, ...) send_failed_at(id, err, STEP_NONE, __VA_ARGS__)

static void send_ready(void) {
  struct utsname u;
  uname(&u);
  struct out o = {.len = 0};
  out_u32(&o, PROTO_VERSION);
  out_bytes(&o, u.release);
  send_frame(T_READY, 0, o.data, o.len);
}

/* Bounds-checked reader of a payload: any overrun sets err and yields zeros. */
struct in { const uint8_t *p; size_t left; bool err; };
static uint32_t in_u32(struct in *r) {
  if (r->left < 4) return r->err = true, 0;
  uint32_t v = get_u32(r->p);
  r->p += 4, r->left -= 4;
  return v;
}

/* A byte string copied out with a NUL added; user data containing NUL is refused (execve cannot carry it). */
static char *in_str(struct in *r) {
  uint32_t n = in_u32(r);
  if (r->err || n > r->left || memchr(r->p, 0, n)) return r->err = true, NULL;
  char *s = malloc(n + 1);
  if (!s) return r->err = true, NULL;
  memcpy(s, r->p, n);
  s[n] = 0;
  r->p += n, r->left -= n;
  return s;
}

/* "/dev/vportNpM" of the virtio-serial port named kindling.agent (no udev here to make the symlink). */
static bool find_vport(char *dev, size_t size) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return false;
  bool found = false;
  for (struct dirent *e; !found && (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char path[300], name[64] = "";
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    name[n > 0 ? n : 0] = 0;
    name[strcspn(name, "\n")] = 0;
    if (strcmp(name, "kindling.agent") == 0) {
      snprintf(dev, size, "/dev/%.32s", e->d_name);
      found = true;
    }
  }
  closedir(d);
  return found;
}

/* Firecracker: connect to the host (CID 2); its hybrid vsock delivers us to <uds_path>_<port>. */
static int vsock_connect(unsigned port) {
  for (int attempt = 0;; attempt++) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) fatal("vsock socket: %s", strerror(errno));
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) == 0) return s;
    if (attempt % 50 == 0) logmsg("agent: vsock connect to port %u: %s (retrying)", port, strerror(errno));
    close(s);
    usleep(attempt < 100 ? 20000 : 200000);
  }
}

/* Whether a virtio device is bound to `driver` (e.g. "virtio_console"): tells which VMM we run under. */
static bool virtio_driver_bound(const char *driver) {
  char path[128];
  snprintf(path, sizeof path, "/sys/bus/virtio/drivers/%s", driver);
  DIR *d = opendir(path);
  if (!d) return false;
  bool found = false;
  for (struct dirent *e; !found && (e = readdir(d));) found = strncmp(e->d_name, "virtio", 6) == 0;
  closedir(d);
  return found;
}

static void open_channel(void) {
  const char *kind = opt("kindling.agent", "auto");
  bool want_vsock = strcmp(kind, "vsock") == 0;
  /* auto: a virtio-serial device means QEMU; its named port is added asynchronously, after the driver
   * binds (a control-queue exchange with the host), so wait for it rather than falling back early */
  bool serial = !want_vsock && (strcmp(kind, "virtio-serial") == 0 || virtio_driver_bound("virtio_console"));
  if (serial) {
    char dev[64];
    bool found = false;
    for (int i = 0; i < 1000 && !(found = find_vport(dev, sizeof dev)); i++) usleep(5000);
    if (!found) fatal("no virtio-serial port named kindling.agent");
    if (!wait_for_path(dev, 5000)) fatal("agent port %s did not appear", dev);
    chan = open(dev, O_RDWR | O_CLOEXEC);
    if (chan < 0) fatal("open %s: %s", dev, strerror(errno));
    logmsg("agent: virtio-serial %s", dev);
  } else {
    unsigned port = (unsigned)strtoul(opt("kindling.agent_port", "1024"), NULL, 10);
    chan = vsock_connect(port);
    logmsg("agent: vsock port %u", port);
  }
}

/* ------------------------------------------------------------------ processes */

struct stream {
  int fd;
  uint32_t credit;
  uint8_t type;
  int drain_left; /* after the process exited: bytes that were in the pipe then, still to send */
};
struct proc {
  bool used, exited;
  bool tty;              /* out.fd is a pty master (stdout and stderr in one), in_fd a dup of it */
  uint32_t id, status, sig;
  pid_t pid;
  struct stream out, err;
  int in_fd;             /* write end of the process's stdin pipe, -1 when none or closed */
  uint8_t *inbuf;        /* stdin bytes received but not yet written to the pipe */
  size_t inlen;
  bool in_eof;           /* host sent STDIN_EOF: close once inbuf is written */
};
static struct proc procs[MAX_PROCS];

static struct proc *find_proc(uint32_t id) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].used && procs[i].id == id) return &procs[i];
  return NULL;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void free_proc(struct proc *p) {
  close_fd(&p->out.fd);
  close_fd(&p->err.fd);
  close_fd(&p->in_fd);
  free(p->inbuf);
  memset(p, 0, sizeof *p);
  p->out.fd = p->err.fd = p->in_fd = -1;
}

/*
 * Move output from a pipe to the host while the stream has credit. After the process has exited, an
 * empty pipe ends the stream even if an orphan still holds it open: orphans must not delay EXITED.
 */
static void pump(struct proc *p, struct stream *s) {
  static uint8_t buf[CHUNK];
  while (s->fd >= 0 && s->credit > 0) {
    size_t want = s->credit < CHUNK ? s->credit : CHUNK;
    /* an orphan writing forever must not keep an exited process's stream open */
    if (p->exited && (size_t)s->drain_left < want) want = (size_t)s->drain_left;
    if (want == 0) {
      close_fd(&s->fd);
      return;
    }
    ssize_t n = read(s->fd, buf, want);
    if (n > 0) {
      send_frame(s->type, p->id, buf, (size_t)n);
      s->credit -= (uint32_t)n;
      if (p->exited) s->drain_left -= (int)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || errno != EAGAIN || p->exited) close_fd(&s->fd);
    return;
  }
}

static void try_finish(struct proc *p) {
  if (!p->exited) return;
  pump(p, &p->out);
  pump(p, &p->err);
  if (p->out.fd >= 0 || p->err.fd >= 0) return; /* waiting for credit */
  uint8_t pl[8];
  put_u32(pl, p->status);
  put_u32(pl + 4, p->sig);
  send_frame(T_EXITED, p->id, pl, sizeof pl);
  free_proc(p);
}

static void reap(void) {
  int st;
  for (pid_t pid; (pid = waitpid(-1, &st, WNOHANG)) > 0;) {
    for (int i = 0; i < MAX_PROCS; i++) {
      struct proc *p = &procs[i];
      if (!p->used || p->pid != pid) continue;
      p->exited = true;
      /* what the process wrote is in its pipes now; anything later comes from orphans */
      if (p->out.fd < 0 || ioctl(p->out.fd, FIONREAD, &p->out.drain_left) < 0) p->out.drain_left = 0;
      /* a pty may still hold output in its flip buffer, which a read flushes (FIONREAD does not): read
       * on until it is empty (EAGAIN) or closed (EIO), at most 1 MiB more from orphans */
      if (p->tty) p->out.drain_left += 1 << 20;
      if (p->err.fd < 0 || ioctl(p->err.fd, FIONREAD, &p->err.drain_left) < 0) p->err.drain_left = 0;
      p->sig = WIFSIGNALED(st) ? (uint32_t)WTERMSIG(st) : 0;
      p->status = WIFSIGNALED(st) ? 128 + p->sig : (uint32_t)WEXITSTATUS(st);
      if (debug_on) logmsg("process %u (pid %d) exited: %u", p->id, pid, p->status);
      try_finish(p);
    }
    /* anything else was an orphan re-parented to us: reaping it is all it needs */
  }
}

struct start_req {
  uint32_t flags, uid, gid, ngroups;
  uint32_t rows, cols; /* flags & 2: the pty's size */
  gid_t groups[MAX_GROUPS];
  char *cwd;
  char **argv;
  char **envp;
};

static void free_strv(char **v) {
  for (char **p = v; p && *p; p++) free(*p);
  free(v);
}

static char **in_strv(struct in *r) {
  uint32_t n = in_u32(r);
  if (r->err || n > r->left / 4) return r->err = true, NULL;
  char **v = calloc(n + 1, sizeof *v);
  for (uint32_t i = 0; v && i < n && !r->err; i++) v[i] = in_str(r);
  if (!v || r->err) free_strv(v), v = NULL, r->err = true;
  return v;
}

/*
 * -w as docker and runc do: a missing working directory is created (mode 0755, owned by root, made
 * before the process drops to its uid), so `-w /nonexistent` behaves the same under every runtime.
 */
static int enter_workdir(const char *cwd) {
  if (!*cwd) cwd = "/";
  if (chdir(cwd) == 0) return 0;
  if (errno != ENOENT) return -1;
  char path[PATH_MAX];
  if (strlen(cwd) >= sizeof path) return errno = ENAMETOOLONG, -1;
  strcpy(path, cwd);
  for (char *p = path + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(path, 0755) < 0 && errno != EEXIST) return -1;
      *p = c;
      if (!c) break;
    }
  }
  return chdir(cwd);
}

/* The child side of START: never returns; errors go back to the parent through errpipe. */
static void exec_child(struct start_req *q, int in_rd, int out_wr, int err_wr, int errpipe) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  setsid();
  int step = 0;
  if (dup2(in_rd, 0) < 0 || dup2(out_wr, 1) < 0 || dup2(err_wr, 2) < 0) goto fail;
  if ((q->flags & 2) && ioctl(0, TIOCSCTTY, 0) < 0) goto fail; /* the pty: its controlling terminal */
  step = 1;
  if (enter_workdir(q->cwd) < 0) goto fail;
  step = 2;
  if (setgroups(q->ngroups, q->groups) < 0 || setgid(q->gid) < 0 || setuid(q->uid) < 0) goto fail;
  step = 3;
  /* execvpe searches the caller's PATH: give it the process's own */
  const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (char **e = q->envp; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  setenv("PATH", path, 1);
  execvpe(q->argv[0], q->argv, q->envp);
fail:;
  int info[2] = {step, errno};
  if (write(errpipe, info, sizeof info) < 0) { /* parent gone: nothing to report to */ }
  _exit(127);
}

static int nonblock(int fd) {
  return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Pipes for the child's stdio (stdin: a pipe when the host feeds it, else /dev/null) and its exec report. */
static int open_stdio(bool stdin_pipe, int in[2], int out[2], int err[2], int ep[2]) {
  if (stdin_pipe ? pipe2(in, O_CLOEXEC) < 0 : (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) return -1;
  return pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0 ? -1 : 0;
}

/*
 * -t: a pty of the container's devpts (the process's stdin, stdout and stderr, and its controlling
 * terminal) of the START's size. We keep the master: read as the process's output (out[0]), written
 * with its stdin (in[1], a dup so the two close apart).
 */
static int open_pty(uint32_t rows, uint32_t cols, int in[2], int out[2], int err[2], int ep[2]) {
  char name[64];
  if ((out[0] = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) return -1;
  if (unlockpt(out[0]) < 0 || ptsname_r(out[0], name, sizeof name) != 0) return -1;
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  if (ioctl(out[0], TIOCSWINSZ, &ws) < 0) return -1;
  if ((in[0] = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) return -1;
  if ((in[1] = fcntl(out[0], F_DUPFD_CLOEXEC, 0)) < 0) return -1;
  if ((out[1] = fcntl(in[0], F_DUPFD_CLOEXEC, 0)) < 0 || (err[1] = fcntl(in[0], F_DUPFD_CLOEXEC, 0)) < 0) return -1;
  return pipe2(ep, O_CLOEXEC);
}

/*
 * Fork and exec; returns the pid, or -1 after telling the host why. The exec-report pipe is CLOEXEC:
 * it reads EOF when execve succeeded, else the failing step and errno (the child then exits 127 and is
 * reaped as an unknown pid).
 */
static pid_t spawn_child(uint32_t id, struct start_req *q, int in[2], int out[2], int err[2], int ep[2]) {
  static const char *steps[] = {"set up stdio", "chdir to", "set uid/gid for", "execute"};
  pid_t pid = fork();
  if (pid == 0) exec_child(q, in[0], out[1], err[1], ep[1]);
  close_fd(&ep[1]);
  if (pid < 0) {
    send_failed(id, errno, "fork: %s", strerror(errno));
    return -1;
  }
  int info[2] = {0, 0};
  if (read(ep[0], info, sizeof info) != (ssize_t)sizeof info) return pid;
  const char *what = info[0] == 1 ? q->cwd : q->argv[0];
  send_failed_at(id, info[1], (uint32_t)(info[0] & 3) + STEP_STDIO, "cannot %s %s: %s", steps[info[0] & 3], what,
                 strerror(info[1]));
  return -1;
}

/* Take over the parent's pipe ends into the process table; the caller closes whatever is left. */
static void track_proc(struct proc *p, uint32_t id, pid_t pid, bool stdin_pipe, int in[2], int out[2], int err[2]) {
  memset(p, 0, sizeof *p);
  p->used = true, p->id = id, p->pid = pid, p->tty = err[0] < 0;
  p->out = (struct stream){out[0], OUT_WINDOW, T_STDOUT, 0};
  p->err = (struct stream){err[0], OUT_WINDOW, T_STDERR, 0};
  p->in_fd = stdin_pipe ? in[1] : -1;
  out[0] = err[0] = -1;
  if (stdin_pipe) in[1] = -1;
  nonblock(p->out.fd), nonblock(p->err.fd);
  if (p->in_fd >= 0) nonblock(p->in_fd);
  uint8_t pl[4];
  put_u32(pl, (uint32_t)pid);
  send_frame(T_STARTED, id, pl, 4);
}

static void start_process(uint32_t id, struct in *r) {
  struct start_req q = {0};
  q.flags = in_u32(r), q.uid = in_u32(r), q.gid = in_u32(r);
  uint32_t ngroups = in_u32(r);
  bool too_many_groups = ngroups > MAX_GROUPS;
  if (too_many_groups) r->err = true; /* nothing after the list can be read */
  for (uint32_t i = 0; i < ngroups && !r->err; i++) q.groups[i] = in_u32(r);
  q.ngroups = r->err ? 0 : ngroups;
  q.cwd = in_str(r);
  q.argv = in_strv(r);
  q.envp = in_strv(r);
  bool tty = q.flags & 2;
  if (tty) q.rows = in_u32(r), q.cols = in_u32(r);
  bool stdin_pipe = (q.flags & 1) || tty; /* a pty's input is always ours to write */
  struct proc *p = NULL;
  for (int i = 0; i < MAX_PROCS && !p; i++)
    if (!procs[i].used) p = &procs[i];
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, ep[2] = {-1, -1};
  pid_t pid;
  if (too_many_groups)
    send_failed(id, E2BIG, "too many supplementary groups (%u; at most %d)", ngroups, MAX_GROUPS);
  else if (r->err || !q.argv || !q.argv[0])
    send_failed(id, EINVAL, "malformed START (arguments and env must not contain NUL bytes)");
  else if (find_proc(id) || !p)
    send_failed(id, EBUSY, find_proc(id) ? "process id %u in use" : "too many processes", id);
  else if (tty && (q.rows == 0 || q.cols == 0 || q.rows > 0xffff || q.cols > 0xffff))
    send_failed(id, EINVAL, "bad terminal size %ux%u", q.rows, q.cols);
  else if (tty ? open_pty(q.rows, q.cols, in, out, err, ep) < 0 : open_stdio(stdin_pipe, in, out, err, ep) < 0)
    send_failed(id, errno, "%s: %s", tty ? "pty" : "pipe", strerror(errno));
  else if ((pid = spawn_child(id, &q, in, out, err, ep)) > 0)
    track_proc(p, id, pid, stdin_pipe, in, out, err);
  int *fds[] = {&in[0], &in[1], &out[0], &out[1], &err[0], &err[1], &ep[0], &ep[1]};
  for (int i = 0; i < 8; i++) close_fd(fds[i]);
  free(q.cwd);
  free_strv(q.argv);
  free_strv(q.envp);
}

static void stdin_data(struct proc *p, const uint8_t *data, size_t len) {
  if (!p) return;
  uint8_t *nb = p->in_fd < 0 ? NULL : realloc(p->inbuf, p->inlen + len);
  if (!nb) {
    /* stdin closed (or no memory): drop the bytes but acknowledge them, so the host never waits on credit */
    uint8_t pl[4];
    put_u32(pl, (uint32_t)len);
    send_frame(T_STDIN_CREDIT, p->id, pl, 4);
    return;
  }
  memcpy(nb + p->inlen, data, len);
  p->inbuf = nb;
  p->inlen += len;
}

/* Write pending stdin into the pipe; credit back what was written (or dropped because the reader left). */
static void flush_stdin(struct proc *p) {
  size_t done = 0;
  while (done < p->inlen) {
    ssize_t n = write(p->in_fd, p->inbuf + done, p->inlen - done);
    if (n > 0) done += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else if (n < 0 && errno == EAGAIN) break;
    else { done = p->inlen; close_fd(&p->in_fd); } /* EPIPE: the process closed its stdin */
  }
  if (done) {
    memmove(p->inbuf, p->inbuf + done, p->inlen - done);
    p->inlen -= done;
    uint8_t pl[4];
    put_u32(pl, (uint32_t)done);
    send_frame(T_STDIN_CREDIT, p->id, pl, 4);
  }
  if (p->inlen == 0 && p->in_eof) close_fd(&p->in_fd);
}

/* ------------------------------------------------------------------ SETUP (snapshot VMs) */

/*
 * SETUP (a snapshot VM, after its restore): the host's clock, fresh entropy, this container's kindling.*
 * options (root, writable layer); then the drives come back and stage 1 and 2 run as at a boot.
 */
static void setup(struct in *r) {
  if (debug_on) logmsg("setup: received");
  uint32_t sec_lo = in_u32(r), sec_hi = in_u32(r), nsec = in_u32(r);
  uint32_t seed_len = in_u32(r);
  const uint8_t *seed = r->p;
  if (!r->err && seed_len <= r->left) r->p += seed_len, r->left -= seed_len;
  else r->err = true;
  char *opts = in_str(r);
  int err = 0;
  char msg[400] = "";
  if (r->err || !opts || strlen(opts) >= sizeof setup_opts)
    err = EINVAL, snprintf(msg, sizeof msg, "malformed SETUP");
  else if (!snapshot_mode || setup_done)
    err = EPROTO, snprintf(msg, sizeof msg, "SETUP only once, in a snapshot VM");
  if (!err) {
    struct timespec now = {.tv_sec = (time_t)((uint64_t)sec_hi << 32 | sec_lo), .tv_nsec = nsec};
    if (clock_settime(CLOCK_REALTIME, &now) < 0) err = errno, snprintf(msg, sizeof msg, "set the clock: %s", strerror(errno));
  }
  if (!err) err = reseed_rng(seed, seed_len, msg, sizeof msg);
  if (!err) {
    memcpy(setup_opts, opts, strlen(opts) + 1);
    logmsg("setup: restored, clock set, RNG reseeded");
    err = bind_disks(msg, sizeof msg);
  }
  free(opts);
  if (!err) {
    setup_done = true;
    /* failures past this point are fatal(), as at a boot: the host sees the VM end with the reason */
    stage1_root();
    stage2(true);
  }
  struct out o = {.len = 0};
  out_u32(&o, (uint32_t)err);
  out_bytes(&o, msg);
  send_frame(T_CONFIGURED, 0, o.data, o.len);
}

/* ------------------------------------------------------------------ configure (mounts, hostname) */

/* Kind 4: bind `src` (a path in the guest, e.g. a subdir of a packed mounts drive) onto `dst`. */
static int do_bind(const char *src, const char *dst, bool ro) {
  struct stat st;
  if (stat(src, &st) < 0) return errno;
  if (S_ISDIR(st.st_mode)) {
    if (mkdir_p(dst, 0755) < 0) return errno;
  } else {
    /* a file mount needs a file to bind onto */
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", dst);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) *slash = 0, mkdir_p(parent, 0755);
    int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EISDIR) return errno;
    if (fd >= 0) close(fd);
  }
  if (mount(src, dst, NULL, MS_BIND, NULL) < 0) return errno;
  if (ro && mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0) return errno;
  return 0;
}

static int do_mount(uint32_t kind, const char *src, const char *dst, const char *type, const char *data,
                    uint32_t flags) {
  unsigned long fl = flags & 1 ? MS_RDONLY : 0;
  if (dst[0] != '/') return EINVAL;
  if (kind == 4) return do_bind(src, dst, flags & 1);
  /* kind 5: detach a helper mount (the binds keep what they need) and remove its empty mount point */
  if (kind == 5) return umount2(dst, MNT_DETACH), rmdir(dst), 0;
  if (mkdir_p(dst, 0755) < 0) return errno ? errno : EINVAL;
  int rc;
  if (kind == 1) {
    if (!wait_for_path(src, 5000)) return ENOENT;
    rc = mount_block(src, dst, type, fl, *data ? data : NULL);
  } else if (kind == 2) {
    rc = mount(src, dst, "virtiofs", fl, *data ? data : NULL);
  } else if (kind == 3) {
    rc = mount("tmpfs", dst, "tmpfs", fl, *data ? data : NULL);
  } else {
    return EINVAL;
  }
  return rc < 0 ? errno : 0;
}

/*
 * Replace /etc/<name> with a regular file holding `data`: written beside it, then renamed over it, so a
 * symlink is replaced rather than followed. Returns 0 or the errno (e.g. EISDIR when it is a directory).
 */
static int replace_etc_file(const char *name, const char *data) {
  char path[64], tmp[64];
  snprintf(path, sizeof path, "/etc/%s", name);
  snprintf(tmp, sizeof tmp, "/etc/.%s.kindling", name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  size_t len = strlen(data);
  ssize_t n = write(fd, data, len);
  int err = n < 0 ? errno : (size_t)n != len ? EIO : 0;
  if (fchmod(fd, 0644) < 0 && !err) err = errno; /* whatever our umask */
  if (close(fd) < 0 && !err) err = errno;
  if (!err && rename(tmp, path) < 0) err = errno;
  if (err) unlink(tmp);
  return err;
}

/*
 * /etc/hostname and /etc/hosts for the configured hostname, as runc's bind mounts give them, written into
 * the container's root (the overlay: the image is untouched). An image without /etc gets one. Returns 0,
 * or the errno with `msg` set.
 */
/* eth0's address from NETWORK (sent before CONFIGURE): /etc/hosts names the container on it, as runc's does */
static char net_address[64];

static int write_etc_files(const char *hostname, char *msg, size_t size) {
  char hosts[400], line[300];
  snprintf(line, sizeof line, "%s\n", hostname);
  snprintf(hosts, sizeof hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n%s\t%s\n",
           *net_address ? net_address : "127.0.1.1", hostname);
  if (mkdir("/etc", 0755) < 0 && errno != EEXIST) {
    int err = errno;
    snprintf(msg, size, "create /etc: %s", strerror(err));
    return err;
  }
  const char *names[] = {"hostname", "hosts"}, *data[] = {line, hosts};
  for (int i = 0; i < 2; i++) {
    int err = replace_etc_file(names[i], data[i]);
    if (err) {
      snprintf(msg, size, "write /etc/%s: %s", names[i], strerror(err));
      return err;
    }
  }
  return 0;
}

static void configure(struct in *r) {
  char *hostname = in_str(r);
  uint32_t n = in_u32(r);
  int err = 0;
  char msg[600] = "";
  if (hostname && *hostname && sethostname(hostname, strlen(hostname)) < 0)
    err = errno, snprintf(msg, sizeof msg, "sethostname: %s", strerror(errno));
  /* before the mounts: the files go into the root, never into a volume (one on /etc hides them) */
  if (!err && hostname && *hostname) err = write_etc_files(hostname, msg, sizeof msg);
  for (uint32_t i = 0; i < n && !r->err && !err; i++) {
    uint32_t kind = in_u32(r);
    char *src = in_str(r), *dst = in_str(r), *type = in_str(r), *data = in_str(r);
    uint32_t flags = in_u32(r);
    if (!r->err && (err = do_mount(kind, src, dst, type, data, flags)))
      snprintf(msg, sizeof msg, "mount %s on %s (%s): %s", src, dst, kind == 2 ? "virtiofs" : type, strerror(err));
    else if (debug_on && !r->err)
      logmsg("mounted %s on %s", src, dst);
    free(src), free(dst), free(type), free(data);
  }
  if (r->err && !err) err = EINVAL, snprintf(msg, sizeof msg, "malformed CONFIGURE");
  free(hostname);
  if (err) logmsg("configure: %s", msg);
  struct out o = {.len = 0};
  out_u32(&o, (uint32_t)err);
  out_bytes(&o, msg);
  send_frame(T_CONFIGURED, 0, o.data, o.len);
}

/* ------------------------------------------------------------------ network (eth0 from the host, no DHCP) */

/* The interface whose MAC is `mac` ("aa:bb:cc:dd:ee:ff"), found in /sys/class/net; waits up to 2 s for the driver. */
static bool find_iface_by_mac(const char *mac, char *name, size_t size) {
  for (int tries = 0; tries < 200; tries++) {
    DIR *d = opendir("/sys/class/net");
    for (struct dirent *e; d && (e = readdir(d));) {
      if (e->d_name[0] == '.') continue;
      char path[300], addr[32] = "";
      snprintf(path, sizeof path, "/sys/class/net/%s/address", e->d_name);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ssize_t n = read(fd, addr, sizeof addr - 1);
      close(fd);
      if (n > 0) addr[strcspn(addr, "\n")] = 0;
      if (strcasecmp(addr, mac) == 0 && strlen(e->d_name) < size) {
        memcpy(name, e->d_name, strlen(e->d_name) + 1);
        closedir(d);
        return true;
      }
    }
    if (d) closedir(d);
    usleep(10000);
  }
  return false;
}

/* A snapshot VM's one NIC (the first interface that is not lo) gets `mac`; its name goes to `name`. */
static int adopt_mac(const char *mac, char *name, size_t size, char *msg, size_t msize) {
  unsigned b[6];
  if (sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
    return snprintf(msg, msize, "network: bad MAC %s", mac), EINVAL;
  DIR *d = opendir("/sys/class/net");
  bool found = false;
  for (struct dirent *e; d && !found && (e = readdir(d));) {
    if (e->d_name[0] == '.' || strcmp(e->d_name, "lo") == 0 || strlen(e->d_name) >= size) continue;
    memcpy(name, e->d_name, strlen(e->d_name) + 1);
    found = true;
  }
  if (d) closedir(d);
  if (!found) return snprintf(msg, msize, "network: no interface for MAC %s", mac), ENODEV;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, name, strnlen(name, IFNAMSIZ - 1));
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  for (int i = 0; i < 6; i++) ifr.ifr_hwaddr.sa_data[i] = (char)b[i];
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int err = s < 0 || ioctl(s, SIOCSIFHWADDR, &ifr) < 0 ? errno : 0;
  if (s >= 0) close(s);
  if (err) snprintf(msg, msize, "network: set %s's MAC to %s: %s", name, mac, strerror(err));
  return err;
}

static int set_inet(int s, unsigned long req, const char *ifname, in_addr_t a) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, ifname, strnlen(ifname, IFNAMSIZ - 1));
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = a;
  return ioctl(s, req, &ifr) < 0 ? errno : 0;
}

/* Address, MTU, up, default route: what a container's eth0 gets from CNI, set with plain ioctls. */
static int configure_iface(const char *mac, const char *address, uint32_t prefix, const char *gateway,
                           uint32_t mtu, char *msg, size_t size) {
  char ifname[IFNAMSIZ];
  struct in_addr addr, gw;
  if (inet_pton(AF_INET, address, &addr) != 1 || prefix > 32 || (*gateway && inet_pton(AF_INET, gateway, &gw) != 1))
    return snprintf(msg, size, "network: bad address %s/%u via %s", address, prefix, gateway), EINVAL;
  if (snapshot_mode) {
    /* restored: the NIC still has the snapshot's MAC; it takes this container's (the veth's) */
    int err = adopt_mac(mac, ifname, sizeof ifname, msg, size);
    if (err) return err;
  } else if (!find_iface_by_mac(mac, ifname, sizeof ifname)) {
    return snprintf(msg, size, "network: no interface with MAC %s (is virtio_net loaded?)", mac), ENODEV;
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return snprintf(msg, size, "network: socket: %s", strerror(errno)), errno;
  int err = 0;
  const char *step = "";
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, ifname, strnlen(ifname, IFNAMSIZ - 1));
  ifr.ifr_mtu = (int)mtu;
  in_addr_t mask = prefix == 0 ? 0 : htonl(~0u << (32 - prefix));
  if (mtu && ioctl(s, SIOCSIFMTU, &ifr) < 0) err = errno, step = "MTU";
  if (!err && (err = set_inet(s, SIOCSIFADDR, ifname, addr.s_addr))) step = "address";
  if (!err && (err = set_inet(s, SIOCSIFNETMASK, ifname, mask))) step = "netmask";
  if (!err && ioctl(s, SIOCGIFFLAGS, &ifr) < 0) err = errno, step = "flags";
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (!err && ioctl(s, SIOCSIFFLAGS, &ifr) < 0) err = errno, step = "up";
  if (!err && *gateway) {
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
    ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
    struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
    g->sin_family = AF_INET;
    g->sin_addr = gw;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = ifname;
    if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) err = errno, step = "default route";
  }
  close(s);
  if (err) snprintf(msg, size, "network: %s %s: %s", ifname, step, strerror(err));
  else if (debug_on) logmsg("network: %s %s/%u via %s mtu %u", ifname, address, prefix, gateway, mtu);
  return err;
}

/*
 * NETWORK: flags (bit 0: an interface follows), mac, address, prefix, gateway, mtu, resolv.conf (written
 * into the container's /etc when not empty). Answered by CONFIGURED, like CONFIGURE.
 */
static void configure_network(struct in *r) {
  uint32_t flags = in_u32(r);
  char *mac = in_str(r), *address = in_str(r);
  uint32_t prefix = in_u32(r);
  char *gateway = in_str(r);
  uint32_t mtu = in_u32(r);
  char *resolv = in_str(r);
  int err = 0;
  char msg[300] = "";
  if (r->err) err = EINVAL, snprintf(msg, sizeof msg, "malformed NETWORK");
  if (!err && (flags & 1)) err = configure_iface(mac, address, prefix, gateway, mtu, msg, sizeof msg);
  if (!err && (flags & 1) && address) snprintf(net_address, sizeof net_address, "%s", address);
  if (!err && *resolv) {
    if (mkdir("/etc", 0755) < 0 && errno != EEXIST) err = errno;
    if (!err) err = replace_etc_file("resolv.conf", resolv);
    if (err) snprintf(msg, sizeof msg, "write /etc/resolv.conf: %s", strerror(err));
  }
  free(mac), free(address), free(gateway), free(resolv);
  if (err) logmsg("%s", msg);
  struct out o = {.len = 0};
  out_u32(&o, (uint32_t)err);
  out_bytes(&o, msg);
  send_frame(T_CONFIGURED, 0, o.data, o.len);
}

/* ------------------------------------------------------------------ power off */

/* A mount point from /proc/mounts, whose fields escape space, tab, newline and backslash as \ooo. */
static void unescape_mount_path(char *s) {
  char *out = s;
  for (char *in = s; *in; out++) {
    if (in[0] == '\\' && in[1] >= '0' && in[1] <= '3' && in[2] && in[3]) {
      *out = (char)((in[1] - '0') * 64 + (in[2] - '0') * 8 + (in[3] - '0'));
      in += 4;
    } else {
      *out = *in++;
    }
  }
  *out = 0;
}

static bool is_kernel_mount(const char *mp) {
  static const char *keep[] = {"/", "/proc", "/sys", "/dev"};
  for (unsigned i = 0; i < sizeof keep / sizeof *keep; i++) {
    size_t n = strlen(keep[i]);
    if (strcmp(mp, keep[i]) == 0 || (n > 1 && strncmp(mp, keep[i], n) == 0 && mp[n] == '/')) return true;
  }
  return false;
}

/*
 * Unmount the container's mounts, newest first, so rw drives are clean (an ext4 left dirty cannot be
 * mounted read-only from a read-only drive later). Busy ones are at least remounted read-only.
 */
static void unmount_container_mounts(void) {
  static char buf[256 * 1024];
  int fd = open("/proc/self/mounts", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  size_t len = 0;
  for (ssize_t n; len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0;) len += (size_t)n;
  close(fd);
  buf[len] = 0;
  char *points[2048];
  int count = 0;
  for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line && count < 2048; line = strtok_r(NULL, "\n", &save)) {
    char *mp = strchr(line, ' ');
    if (!mp) continue;
    mp++;
    mp[strcspn(mp, " ")] = 0;
    unescape_mount_path(mp);
    if (!is_kernel_mount(mp)) points[count++] = mp;
  }
  for (int i = count - 1; i >= 0; i--) {
    if (umount2(points[i], 0) < 0 && mount(NULL, points[i], NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0 && debug_on)
      logmsg("unmount %s: %s", points[i], strerror(errno));
  }
}

static bool session_child; /* an exec session's agent (exec_listener), not PID 1 */
static void end_session(void) __attribute__((noreturn));

static void power_off(void) {
  if (session_child) end_session(); /* a session ending is not the VM ending */
  logmsg("poweroff");
  kill(-1, SIGTERM);
  for (int i = 0; i < 50 && waitpid(-1, NULL, WNOHANG) >= 0; i++) usleep(10000);
  kill(-1, SIGKILL);
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
  sync();
  unmount_container_mounts();
  reboot(halt_reboot ? RB_AUTOBOOT : RB_POWER_OFF);
  for (;;) pause(); /* if the VMM cannot power off, at least never exit PID 1 */
}

/* ------------------------------------------------------------------ the event loop */

static uint8_t *rxbuf;
static size_t rxlen, rxcap;

static void handle_frame(uint8_t type, uint32_t id, const uint8_t *pl, size_t len) {
  struct in r = {pl, len, false};
  struct proc *p = find_proc(id);
  host_spoke = true;
  if (snapshot_mode && !setup_done && type != T_SETUP && type != T_POWEROFF) {
    /* nothing of a container before SETUP has given it its root */
    if (type == T_CONFIGURE || type == T_NETWORK) {
      struct out o = {.len = 0};
      out_u32(&o, EPROTO);
      out_bytes(&o, "SETUP first: this VM is waiting for its root");
      send_frame(T_CONFIGURED, 0, o.data, o.len);
    } else if (type == T_START) {
      send_failed(id, EPROTO, "SETUP first: this VM is waiting for its root");
    }
    return;
  }
  switch (type) {
  case T_SETUP: setup(&r); break;
  case T_CONFIGURE: configure(&r); break;
  case T_NETWORK: configure_network(&r); break;
  case T_START: start_process(id, &r); break;
  case T_STDIN: stdin_data(p, pl, len); break;
  case T_STDIN_EOF:
    if (p) p->in_eof = true, flush_stdin(p);
    break;
  case T_SIGNAL: {
    uint32_t sig = in_u32(&r);
    if (p && !p->exited && kill(p->pid, (int)sig) < 0) logmsg("signal %u: %s", sig, strerror(errno));
    break;
  }
  case T_RESIZE: {
    struct winsize ws = {.ws_row = (unsigned short)in_u32(&r), .ws_col = (unsigned short)in_u32(&r)};
    /* the kernel sends SIGWINCH to the terminal's foreground process group */
    if (p && p->tty && p->out.fd >= 0 && !r.err && ioctl(p->out.fd, TIOCSWINSZ, &ws) < 0)
      logmsg("resize: %s", strerror(errno));
    break;
  }
  case T_OUTPUT_CREDIT:
    if (p) {
      p->out.credit += in_u32(&r);
      p->err.credit += in_u32(&r);
      if (p->exited) try_finish(p);
    }
    break;
  case T_POWEROFF: power_off();
  default: send_failed(0, EPROTO, "unknown message type 0x%02x", type);
  }
}

/* Read what the channel has; dispatch complete frames. A closed channel means the host is gone. */
static void read_channel(void) {
  if (rxcap - rxlen < CHUNK) {
    rxcap = rxcap ? rxcap * 2 : 2 * (MAX_PAYLOAD + HDR_LEN);
    rxbuf = realloc(rxbuf, rxcap);
    if (!rxbuf) fatal("out of memory");
  }
  ssize_t n = read(chan, rxbuf + rxlen, rxcap - rxlen);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    logmsg("agent: host closed the channel");
    power_off();
  }
  rxlen += (size_t)n;
  size_t off = 0;
  while (rxlen - off >= HDR_LEN) {
    uint32_t len = get_u32(rxbuf + off);
    if (len > MAX_PAYLOAD || rxbuf[off + 4] != PROTO_VERSION) {
      logmsg("agent: protocol error (version %u, length %u)", rxbuf[off + 4], len);
      power_off();
    }
    if (rxlen - off < HDR_LEN + len) break;
    handle_frame(rxbuf[off + 5], get_u32(rxbuf + off + 8), rxbuf + off + HDR_LEN, len);
    off += HDR_LEN + len;
  }
  memmove(rxbuf, rxbuf + off, rxlen - off);
  rxlen -= off;
}

/* SIGCHLD: reap. Anything else sent to PID 1 (e.g. by the VMM or `kill 1`) goes to the host's processes. */
static void handle_signals(int sfd) {
  struct signalfd_siginfo si;
  while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) {
      reap();
      continue;
    }
    for (int i = 0; i < MAX_PROCS; i++)
      if (procs[i].used && !procs[i].exited) kill(procs[i].pid, (int)si.ssi_signo);
  }
}

static void agent_loop(int sfd) {
  struct pollfd pfds[2 + 3 * MAX_PROCS];
  struct { struct proc *p; int what; } owners[2 + 3 * MAX_PROCS];
  long last_ready = uptime_ms();
  for (;;) {
    int n = 0;
    pfds[n++] = (struct pollfd){.fd = chan, .events = POLLIN};
    pfds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    for (int i = 0; i < MAX_PROCS; i++) {
      struct proc *p = &procs[i];
      if (!p->used) continue;
      if (p->out.fd >= 0 && p->out.credit) owners[n].p = p, owners[n].what = 0, pfds[n++] = (struct pollfd){p->out.fd, POLLIN, 0};
      if (p->err.fd >= 0 && p->err.credit) owners[n].p = p, owners[n].what = 1, pfds[n++] = (struct pollfd){p->err.fd, POLLIN, 0};
      if (p->in_fd >= 0 && p->inlen) owners[n].p = p, owners[n].what = 2, pfds[n++] = (struct pollfd){p->in_fd, POLLOUT, 0};
    }
    int rc = poll(pfds, (nfds_t)n, host_spoke ? -1 : 500);
    if (rc < 0 && errno != EINTR) fatal("poll: %s", strerror(errno));
    if (!host_spoke && uptime_ms() - last_ready >= 500) send_ready(), last_ready = uptime_ms();
    if (rc <= 0) continue;
    /* output first, then reaping: a process's last output precedes its EXITED */
    for (int i = 2; i < n; i++) {
      if (!pfds[i].revents) continue;
      struct proc *p = owners[i].p;
      if (!p->used) continue;
      if (owners[i].what == 0) pump(p, &p->out);
      else if (owners[i].what == 1) pump(p, &p->err);
      else if (p->in_fd == pfds[i].fd) flush_stdin(p);
    }
    if (pfds[1].revents) handle_signals(sfd);
    if (pfds[0].revents & POLLIN) read_channel();
    else if (pfds[0].revents & (POLLHUP | POLLERR)) {
      logmsg("agent: channel hung up");
      power_off();
    }
  }
}

/* ------------------------------------------------------------------ exec sessions over vsock */

/* A session's channel closed (or it failed): its processes go with it, the VM stays. */
static void end_session(void) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].used && !procs[i].exited) kill(procs[i].pid, SIGKILL);
  while (waitpid(-1, NULL, 0) > 0) {}
  _exit(0);
}

/*
 * Host-initiated connections (Firecracker's CONNECT <port>, the same through vhost-device-vsock): each one
 * is a second agent channel, served by a forked copy of the agent with its own process table, so the host
 * can exec into a running VM without sharing the first channel. Runs in a child of PID 1 that only
 * accepts; it never touches PID 1's channel or processes.
 */
static void exec_listener(int sfd, unsigned port) {
  int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(l, 8) < 0) {
    logmsg("agent: exec sessions on vsock port %u unavailable: %s", port, strerror(errno));
    _exit(0);
  }
  for (;;) {
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    while (waitpid(-1, NULL, WNOHANG) > 0) {} /* ended sessions */
    if (c < 0) {
      if (errno != EINTR) usleep(100000);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(l);
      session_child = true;
      chan = c;
      host_spoke = false;
      rxlen = 0;
      send_ready();
      agent_loop(sfd);
    }
    close(c);
  }
}

/* With the vsock channel: accept exec sessions on kindling.exec_port (default 1025; 0 turns them off). */
static void start_exec_listener(int sfd) {
  if (strcmp(opt("kindling.agent", "auto"), "vsock") != 0) return;
  unsigned port = (unsigned)strtoul(opt("kindling.exec_port", "1025"), NULL, 10);
  if (port == 0) return;
  pid_t pid = fork();
  if (pid < 0) {
    logmsg("agent: no exec sessions: fork: %s", strerror(errno));
    return;
  }
  if (pid == 0) {
    close(chan);
    chan = -1;
    exec_listener(sfd, port);
  }
}

/* ------------------------------------------------------------------ main */

/* The kernel may start us without fds 0-2 (no /dev/console in the initramfs): open the console. */
static void ensure_console(void) {
  if (fcntl(2, F_GETFD) >= 0) return;
  int fd = open("/dev/console", O_RDWR);
  if (fd < 0) return;
  for (int i = 0; i < 3; i++)
    if (fd != i) dup2(fd, i);
  if (fd > 2) close(fd);
}

int main(void) {
  if (getpid() != 1) {
    fprintf(stderr, "kindling-init runs as PID 1 inside a Kindling VM\n");
    return 2;
  }
  bool from_initramfs = root_is_initramfs();
  if (from_initramfs) {
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    ensure_console();
    umount2("/dev", MNT_DETACH); /* stage1 mounts it again, in order */
    stage1_base();
    if (!snapshot_mode) stage1_root();
  } else {
    ensure_console();
    mkdir("/proc", 0755);
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    read_cmdline();
    logmsg("stage1: root mounted by the kernel");
    if (snapshot_mode) fatal("kindling.snapshot=1 needs the initramfs (the root comes in SETUP)");
  }
  /* a snapshot VM: READY with no drive read; the root and overlay follow SETUP (after a restore). What of
   * stage 2 does not need the root runs now, once, instead of after every restore: the initramfs emptied
   * and bound for pivot_root (its mounts come along), loopback up. */
  if (snapshot_mode) {
    enter_bound_initramfs();
    loopback_up();
    early_stage2 = true;
    unbind_disks();
  } else {
    stage2(from_initramfs);
  }

  /* Signals arrive through a signalfd so the event loop handles them in order with everything else. */
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  for (unsigned i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaddset(&set, sigs[i]);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) fatal("signalfd: %s", strerror(errno));
  for (int i = 0; i < MAX_PROCS; i++) procs[i].out.fd = procs[i].err.fd = procs[i].in_fd = -1;

  open_channel();
  start_exec_listener(sfd);
  send_ready();
  logmsg("agent: ready");
  agent_loop(sfd);
}
