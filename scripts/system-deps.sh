#!/usr/bin/env bash
# Install the Debian packages threezone needs, when they are missing.
# As root with apt-get, installs them; otherwise prints the command to run.
set -euo pipefail

needed=()
# `python3 -m venv` needs ensurepip, which Debian ships separately.
if ! "${PYTHON:-python3}" -c 'import ensurepip' 2>/dev/null; then
  needed+=(python3-venv)
fi

# The sandbox backend: bubblewrap, and libseccomp (pyseccomp loads it with ctypes).
command -v bwrap >/dev/null || needed+=(bubblewrap)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || needed+=(libseccomp2)

# The qemu backend: QEMU itself, and apt-get/dpkg-deb to fetch its guest kernel (Debian's).
command -v qemu-system-x86_64 >/dev/null || needed+=(qemu-system-x86)
# GNU cpio reads the initramfs writer's archives back in its test.
command -v cpio >/dev/null || needed+=(cpio)

# Optional, installed when we can (root with apt-get), never required:
# - nftables, for the kernel-level egress fence (docs/egress.md) and its test;
# - Dovecot and Postfix, the real IMAP/SMTP servers the email tests start on loopback
#   with throwaway configs (threezone.testing.mailserver); without them those tests skip.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  command -v nft >/dev/null || needed+=(nftables)
  [ -x /usr/lib/dovecot/imap ] || needed+=(dovecot-imapd)
  [ -x /usr/lib/dovecot/lmtp ] || needed+=(dovecot-lmtpd)
  [ -x /usr/sbin/postfix ] || needed+=(postfix)
fi

# The qemu backend fetches its guest kernel with `apt-get download`, which needs apt's
# package lists; a fresh machine may have none yet.
if [ "$(id -u)" -eq 0 ] && command -v apt-cache >/dev/null \
  && ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  apt-get update -qq || true
fi

[ ${#needed[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian packages: ${needed[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}"
else
  echo "threezone needs these OS packages: ${needed[*]}" >&2
  echo "Install them with: sudo apt-get install ${needed[*]}" >&2
  exit 1
fi
