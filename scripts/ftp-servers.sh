#!/usr/bin/env bash
# Install the real FTP servers the compatibility suite (tests/compat) runs: vsftpd, ProFTPD (with
# mod_tls) and Pure-FTPd from Debian's packages, plus the local user they log in as.
#
#   scripts/ftp-servers.sh install   idempotent; a second run only checks and returns
#   scripts/ftp-servers.sh check     exit 0 when everything is in place, else say what is missing
#
# The three packages all declare "Conflicts: ftp-server", so dpkg installs at most one of them.
# Their .debs are therefore fetched with `apt-get download` and unpacked into
# .cache/ftp-servers/root (never started as system services); only the shared libraries they
# link against are installed with apt-get. The tests start each server on 127.0.0.1 with its own
# config file in a temporary directory.
#
# Needs root (apt-get, useradd, /etc/pam.d). Environment: FTP_COMPAT_USER (default ftpcompat),
# FTP_COMPAT_PASSWORD (default compat-Pw-2026; a loopback-only test account).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.cache/ftp-servers
user=${FTP_COMPAT_USER:-ftpcompat}
password=${FTP_COMPAT_PASSWORD:-compat-Pw-2026}
pam_service=/etc/pam.d/ftp-pooler-compat
packages=(vsftpd proftpd-core proftpd-mod-crypto pure-ftpd)
libraries=(libwrap0 libsodium23 libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3
  libcap2 libpam0g libssl3 libacl1 libidn2-0 openssl)
binaries=(usr/sbin/vsftpd usr/sbin/proftpd usr/lib/proftpd/mod_tls.so usr/sbin/pure-ftpd
  usr/bin/pure-pw)

log() { printf 'ftp-servers: %s\n' "$*" >&2; }

missing() {
  local what=()
  for binary in "${binaries[@]}"; do
    [ -e "$dest/root/$binary" ] || what+=("$binary")
  done
  if [ -e "$dest/root/usr/sbin/proftpd" ] && ldd "$dest/root/usr/sbin/proftpd" | grep -q "not found"; then
    what+=("libraries of proftpd")
  fi
  # vsftpd changes into the home directory before local_root: it must exist.
  [ "$(getent passwd "$user" | cut -d: -f6)" = / ] || what+=("user $user (home /)")
  [ -f "$pam_service" ] || what+=("$pam_service")
  command -v openssl >/dev/null || what+=("openssl (hashes the servers' user files)")
  [ -f "$dest/versions.txt" ] || what+=("$dest/versions.txt")
  printf '%s\n' "${what[@]}"
}

install() {
  if [ -z "$(missing)" ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    log "must run as root to install: $(missing | paste -sd, -)"
    exit 1
  fi
  log "installing: $(missing | paste -sd, -)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${libraries[@]}" >/dev/null
  local debs
  debs=$(mktemp -d)
  # _apt cannot write into a root-only temp dir; the download then runs unsandboxed (harmless).
  (cd "$debs" && apt-get download -qq "${packages[@]}" 2>/dev/null)
  rm -rf "$dest/root"
  mkdir -p "$dest/root"
  : > "$dest/versions.txt.new"
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$dest/root"
    printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
      >> "$dest/versions.txt.new"
  done
  rm -rf "$debs"
  mv "$dest/versions.txt.new" "$dest/versions.txt"
  if ! id "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin "$user"
  fi
  usermod --home / "$user"
  printf '%s:%s\n' "$user" "$password" | chpasswd
  # vsftpd authenticates local users through PAM; this service checks the password only
  # (Debian's own /etc/pam.d/vsftpd also wants a login shell and consults /etc/ftpusers).
  printf '%s\n' "# ftp-pooler compatibility tests (scripts/ftp-servers.sh)" \
    "auth required pam_unix.so" "account required pam_unix.so" \
    "session optional pam_unix.so" > "$pam_service"
  local left
  left=$(missing)
  if [ -n "$left" ]; then
    log "still missing after install: $(paste -sd, - <<< "$left")"
    exit 1
  fi
  log "ready in $dest/root: $(paste -sd, - < "$dest/versions.txt")"
}

check() {
  local left
  left=$(missing)
  if [ -n "$left" ]; then
    log "missing: $(paste -sd, - <<< "$left"); run \`make compat-setup\` (as root)"
    exit 1
  fi
}

case "${1:-}" in
  install) install ;;
  check) check ;;
  *) echo "usage: $0 install|check" >&2; exit 2 ;;
esac
