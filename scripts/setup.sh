#!/usr/bin/env bash
# Sets up Kindling on a fresh Debian 12 machine: apt packages, npm packages, the build.
# Idempotent and quiet when everything is already there. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  squashfs-tools      # mksquashfs/unsquashfs: the block image format
  e2fsprogs           # mkfs.ext4 -d: the `copy` strategy, scratch disks
  qemu-system-x86     # QEMU microvm (TCG here; KVM where usable); virtiofsd comes with qemu-system-common
  qemu-utils
  runc                # OCI runtime
  runsc               # gVisor
  libfuse2 fuse3      # fuse-native links libfuse2; fusermount3 for unmounting
  busybox-static      # the tiny test image and guest debugging shell
  debootstrap         # the Debian minbase test images
  umoci               # builds OCI layouts for the multi-layer test image
  docker-registry     # a real OCI registry on 127.0.0.1 for tests and the demo
  curl                # the demo waits for that registry to answer
  skopeo              # loads images into that registry
  apache2-utils       # htpasswd -B: bcrypt users for the registry basic-auth tests
  openssl             # self-signed certificate for the registry HTTPS test
  zstd                # zstd layers
  attr                # setfattr: xattrs (security.capability) when applying layers
  cpio                # initramfs
  kmod                # modinfo/depmod for the guest modules
  lz4 xz-utils        # guest kernel decompression
  util-linux iproute2 # losetup, mount, ip (netns, tuntap), tc (a VM's TAP wired to its veth)
  containernetworking-plugins # CNI bridge, host-local, portmap, firewall, loopback (in /usr/lib/cni)
  iptables            # what the bridge (ipMasq), portmap and firewall plugins program
  rsync               # copies rw mounts back to the host after a VM exits
  gcc libc6-dev make  # the static guest init
  linux-source-6.1 bc flex bison libelf-dev # kindling kernel build: Kindling's own guest kernel
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# vhost-device-vsock (rust-vmm, crates.io): the host side of Firecracker's hybrid vsock for QEMU, so the
# guest agent speaks over vsock in real VMs here (docs/guest.md). Built once per version with cargo into
# its own root; a second setup finds the binary and does nothing. Rust comes from rustup on these machines
# (~/.cargo/bin, which a non-login shell may not have on PATH).
VHOST_VSOCK_VERSION=0.3.0
VHOST_VSOCK_ROOT=/opt/kindling/tools/vhost-device-vsock-$VHOST_VSOCK_VERSION
if [ ! -x "$VHOST_VSOCK_ROOT/bin/vhost-device-vsock" ]; then
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  if ! command -v cargo >/dev/null; then
    echo "setup: cargo is missing: install Rust with rustup (https://rustup.rs) to build vhost-device-vsock" >&2
    exit 1
  fi
  echo "setup: building vhost-device-vsock $VHOST_VSOCK_VERSION with cargo (~5 min)" >&2
  cargo install --quiet --locked --version "$VHOST_VSOCK_VERSION" --root "$VHOST_VSOCK_ROOT.tmp" vhost-device-vsock
  rm -rf "$VHOST_VSOCK_ROOT" && mv "$VHOST_VSOCK_ROOT.tmp" "$VHOST_VSOCK_ROOT"
fi
ln -sfn "$VHOST_VSOCK_ROOT/bin/vhost-device-vsock" /usr/local/bin/vhost-device-vsock

# npm packages: only when the lockfile changed since the last install.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

npm run -s build
