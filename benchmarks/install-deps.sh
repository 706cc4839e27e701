#!/usr/bin/env bash
# Install what `make bench` needs beyond the project's virtualenv, idempotently:
#   - the Debian packages vsftpd, lftp, rclone and curl (only those missing; needs root or sudo);
#   - a local account `ftp-pooler-bench` for vsftpd, with no login shell (/usr/sbin/nologin);
#   - a PAM service `ftp-pooler-bench` (password check only), so vsftpd accepts that account
#     without its shell being listed in /etc/shells (Debian's own vsftpd PAM file requires that).
# The account's password is set on every run; it only ever logs in to a vsftpd on 127.0.0.1.
set -euo pipefail

user=${BENCH_FTP_USER:-ftp-pooler-bench}
password=${BENCH_FTP_PASSWORD:-bench-only-pw}
packages=(vsftpd lftp rclone curl)
declare -A binaries=([vsftpd]=/usr/sbin/vsftpd [lftp]=lftp [rclone]=rclone [curl]=curl)

log() { printf 'bench-deps: %s\n' "$*" >&2; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    log "must run as root (or with sudo): vsftpd and the benchmark account need it"
    exit 1
  fi
fi

missing=()
for package in "${packages[@]}"; do
  command -v "${binaries[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# vsftpd changes into the home directory before local_root, so it must exist.
home=/var/lib/$user
if ! id "$user" >/dev/null 2>&1; then
  log "creating the local account $user (no login shell)"
  "${sudo_cmd[@]}" useradd --system --no-create-home --home-dir "$home" \
    --shell /usr/sbin/nologin "$user"
fi
"${sudo_cmd[@]}" mkdir -p "$home"
"${sudo_cmd[@]}" usermod --home "$home" "$user" 2>/dev/null || true
echo "$user:$password" | "${sudo_cmd[@]}" chpasswd

pam=/etc/pam.d/ftp-pooler-bench
wanted=$'# FTP Pooler benchmarks: vsftpd on 127.0.0.1 checks the password only.\nauth required pam_unix.so\naccount required pam_unix.so\nsession required pam_permit.so'
if [ "$(cat "$pam" 2>/dev/null)" != "$wanted" ]; then
  log "writing $pam"
  printf '%s\n' "$wanted" | "${sudo_cmd[@]}" tee "$pam" >/dev/null
fi
# vsftpd's secure_chroot_dir; the package creates it, a cleaned /var/run may not have it.
"${sudo_cmd[@]}" mkdir -p /var/run/vsftpd/empty
