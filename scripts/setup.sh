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
  util-linux iproute2 # losetup, mount, ip
  rsync               # copies rw mounts back to the host after a VM exits
  gcc libc6-dev make  # the static guest init
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

# npm packages: only when the lockfile changed since the last install.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

npm run -s build
