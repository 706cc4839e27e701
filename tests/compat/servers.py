"""Real FTP servers for the compatibility suite, each a process on 127.0.0.1 with its own config.

vsftpd, ProFTPD and Pure-FTPd run from Debian's packages unpacked by `make compat-setup`
(scripts/ftp-servers.sh) into .cache/ftp-servers/root; pyftpdlib runs as a subprocess of
tests/compat/pyftpd.py. Each server serves one directory owned by the test user, allows at most
``SESSION_LIMIT`` sessions from one address, and in TLS modes presents a certificate for
``SERVER_NAME`` signed by a CA the suite generates (:class:`TestCA`).
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from models.connections import FtpConnection
from tests.support.stack import free_port  # one port picker for the whole suite

REPO = Path(__file__).resolve().parents[2]
DEBS = REPO / ".cache" / "ftp-servers" / "root"
SETUP_HINT = "run `make compat-setup` (as root): it installs the servers and the test user"
USER = os.environ.get("FTP_COMPAT_USER", "ftpcompat")
PASSWORD = os.environ.get("FTP_COMPAT_PASSWORD", "compat-Pw-2026")
SERVER_NAME = "ftp.compat.test"  # the only name in the server certificate (no IP address)
SESSION_LIMIT = 3  # sessions per client address each server accepts

SERVERS = ("vsftpd", "proftpd", "pure-ftpd", "pyftpdlib")
# Implicit FTPS (TLS from the first byte) is offered by vsftpd and ProFTPD only.
MODES = {
    "vsftpd": ("none", "explicit", "implicit"),
    "proftpd": ("none", "explicit", "implicit"),
    "pure-ftpd": ("none", "explicit"),
    "pyftpdlib": ("none", "explicit"),
}
# name -> (server, tls mode, allow_overwrite); the last row is ProFTPD as it ships (its own
# default refuses to replace an existing file, Debian's proftpd.conf turns that on).
VARIANTS: dict[str, tuple[str, str, bool]] = {
    f"{server}-{mode}": (server, mode, True) for server in SERVERS for mode in MODES[server]
}
VARIANTS["proftpd-none-no-overwrite"] = ("proftpd", "none", False)
TLS_VARIANTS = [name for name, (_, tls, _) in VARIANTS.items() if tls != "none"]


def missing_setup() -> str | None:
    """What `make compat-setup` has not installed yet (or why the suite cannot run), or None."""
    if os.geteuid() != 0:
        return "the compatibility suite starts FTP servers that switch to their user: run as root"
    result = subprocess.run(
        [str(REPO / "scripts" / "ftp-servers.sh"), "check"], capture_output=True, text=True
    )
    if result.returncode != 0:
        return result.stderr.strip() or "scripts/ftp-servers.sh check failed"
    return None


class TestCA:
    """A private CA and one server certificate for ``SERVER_NAME`` (RSA: ProFTPD's directive)."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        now = datetime.datetime.now(datetime.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ftp-pooler compat test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.combined_file = directory / "server-combined.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(pem))
        self.cert_file.write_bytes(cert.public_bytes(pem))
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        self.key_file.write_bytes(key_pem)
        self.key_file.chmod(0o600)
        self.combined_file.write_bytes(key_pem + cert.public_bytes(pem))
        self.combined_file.chmod(0o600)


@dataclass
class Server:
    """One server process in one TLS mode, serving ``root`` as the test user."""

    kind: str
    tls: str
    ca: TestCA
    base: Path
    allow_overwrite: bool = True  # ProFTPD only: whether RNTO/STOR may replace a file
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.name = f"{self.kind}-{self.tls}" + ("" if self.allow_overwrite else "-no-overwrite")
        self.work = self.base / f"{self.name}-conf"
        self.root = self.base / f"{self.name}-data"
        self.log_path = self.work / "server.log"

    # -- what a client needs ---------------------------------------------------------------
    def connection(self, conn_id: str | None = None, **overrides: object) -> FtpConnection:
        settings: dict[str, object] = {
            "id": conn_id or self.name,
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
            "tls": self.tls,
        }
        if self.tls != "none":
            settings.update(tls_ca_file=self.ca.ca_file, tls_server_name=SERVER_NAME)
        settings.update(overrides)
        return FtpConnection(**settings)  # type: ignore[arg-type]

    def ini_section(self, conn_id: str, **overrides: object) -> str:
        conn = self.connection(conn_id, **overrides)
        lines = [
            f"[{conn_id}]",
            "type = ftp",
            f"host = {conn.host}",
            f"port = {conn.port}",
            f"user = {conn.user}",
            f"pass = {conn.password}",
            f"tls = {conn.tls}",
        ]
        if conn.tls != "none":
            lines.append(f"tls_verify = {str(conn.tls_verify).lower()}")
            if conn.tls_ca_file:
                lines.append(f"tls_ca_file = {conn.tls_ca_file}")
            if conn.tls_server_name:
                lines.append(f"tls_server_name = {conn.tls_server_name}")
        return "\n".join(lines) + "\n"

    def put(self, path: str, data: bytes) -> Path:
        """Place a file on the server (as its user would have written it)."""
        target = self.root / path.lstrip("/")
        owner = pwd.getpwnam(USER)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        while parent != self.root and parent.is_relative_to(self.root):
            os.chown(parent, owner.pw_uid, owner.pw_gid)
            parent = parent.parent
        target.write_bytes(data)
        os.chown(target, owner.pw_uid, owner.pw_gid)
        return target

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Server:
        owner = pwd.getpwnam(USER)
        for directory in (self.work, self.root):
            directory.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o755)
        command = getattr(self, f"_configure_{self.kind.replace('-', '_')}")(owner)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.work, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_listening()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.name} not listening within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in sorted(self.work.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            texts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(texts) or "<no log>"

    # -- per-server configuration ----------------------------------------------------------
    def _configure_vsftpd(self, owner: pwd.struct_passwd) -> list[str]:
        empty = self.work / "empty"
        empty.mkdir(exist_ok=True)
        empty.chmod(0o555)
        lines = [
            "listen=YES",
            "listen_ipv6=NO",
            "listen_address=127.0.0.1",
            f"listen_port={self.port}",
            "background=NO",
            "anonymous_enable=NO",
            "local_enable=YES",
            "write_enable=YES",
            "local_umask=022",
            f"local_root={self.root}",
            "chroot_local_user=YES",
            "allow_writeable_chroot=YES",
            # Containers: no seccomp sandbox, no new namespaces (NOTES.md).
            "seccomp_sandbox=NO",
            "isolate=NO",
            "isolate_network=NO",
            f"secure_chroot_dir={empty}",
            "pam_service_name=ftp-pooler-compat",
            "pasv_enable=YES",
            "utf8_filesystem=YES",
            f"max_per_ip={SESSION_LIMIT}",
            "max_clients=50",
            "syslog_enable=NO",
            f"vsftpd_log_file={self.work / 'vsftpd.log'}",
            "xferlog_enable=YES",
            "xferlog_std_format=NO",
            "log_ftp_protocol=YES",
            "ftpd_banner=ftp-pooler compat vsftpd",
        ]
        if self.tls != "none":
            lines += [
                "ssl_enable=YES",
                f"rsa_cert_file={self.ca.cert_file}",
                f"rsa_private_key_file={self.ca.key_file}",
                "ssl_ciphers=HIGH",
                "force_local_logins_ssl=YES",
                "force_local_data_ssl=YES",
                "require_ssl_reuse=YES",  # the default, spelled out: data must resume the session
                f"implicit_ssl={'YES' if self.tls == 'implicit' else 'NO'}",
            ]
        config = self.work / "vsftpd.conf"
        config.write_text("\n".join(lines) + "\n")
        return [str(DEBS / "usr/sbin/vsftpd"), str(config)]

    def _configure_proftpd(self, owner: pwd.struct_passwd) -> list[str]:
        users = self.work / "ftpd.passwd"
        users.write_text(
            f"{USER}:{sha512_crypt(PASSWORD)}:{owner.pw_uid}:{owner.pw_gid}::{self.root}:"
            "/usr/sbin/nologin\n"
        )
        groups = self.work / "ftpd.group"
        groups.write_text(f"{USER}:x:{owner.pw_gid}:\n")
        for path in (users, groups):
            path.chmod(0o640)
        lines = [
            'ServerName "ftp-pooler compat proftpd"',
            'ServerIdent on "ftp-pooler compat proftpd"',
            "ServerType standalone",
            "DefaultServer on",
            f"Port {self.port}",
            "DefaultAddress 127.0.0.1",
            "SocketBindTight on",
            "UseIPv6 off",
            "UseReverseDNS off",
            f"User {USER}",
            f"Group {USER}",
            f"PidFile {self.work / 'proftpd.pid'}",
            f"ScoreboardFile {self.work / 'proftpd.scoreboard'}",
            f"SystemLog {self.work / 'proftpd.log'}",
            "WtmpLog off",
            "DelayEngine off",
            "AuthOrder mod_auth_file.c",
            f"AuthUserFile {users}",
            f"AuthGroupFile {groups}",
            "RequireValidShell off",
            "UseFtpUsers off",
            "DefaultRoot ~",
            "Umask 022",
            # Debian's stock proftpd.conf says "on"; ProFTPD's own default is "off".
            f"AllowOverwrite {'on' if self.allow_overwrite else 'off'}",
            f"MaxClientsPerHost {SESSION_LIMIT}",
            "MaxInstances 50",
            "TimeoutIdle 300",
        ]
        if self.tls != "none":
            lines += [
                f"ModulePath {DEBS / 'usr/lib/proftpd'}",
                "LoadModule mod_tls.c",
                "TLSEngine on",
                f"TLSLog {self.work / 'tls.log'}",
                "TLSProtocol TLSv1.2 TLSv1.3",
                f"TLSRSACertificateFile {self.ca.cert_file}",
                f"TLSRSACertificateKeyFile {self.ca.key_file}",
                "TLSRequired on",  # control and data (the default TLSOptions require reuse too)
                "TLSVerifyClient off",
                "TLSRenegotiate none",
            ]
            if self.tls == "implicit":
                lines.append("TLSOptions UseImplicitSSL")
        config = self.work / "proftpd.conf"
        config.write_text("\n".join(lines) + "\n")
        return [str(DEBS / "usr/sbin/proftpd"), "--nodaemon", "-c", str(config)]

    def _configure_pure_ftpd(self, owner: pwd.struct_passwd) -> list[str]:
        # pure-pw useradd would hash with argon2id at ~2 s of CPU per login on this machine;
        # the same line with a SHA-512 crypt hash keeps logins cheap ("/./": chroot there).
        users = self.work / "pureftpd.passwd"
        database = self.work / "pureftpd.pdb"
        users.write_text(
            f"{USER}:{sha512_crypt(PASSWORD)}:{owner.pw_uid}:{owner.pw_gid}::{self.root}/./"
            + ":" * 12
            + "\n"
        )
        users.chmod(0o600)
        subprocess.run(
            [str(DEBS / "usr/bin/pure-pw"), "mkdb", str(database), "-f", str(users)],
            capture_output=True,
            check=True,
        )
        command = [
            str(DEBS / "usr/sbin/pure-ftpd"),
            "--bind",
            f"127.0.0.1,{self.port}",
            "--login",
            f"puredb:{database}",
            "--noanonymous",
            "--dontresolve",
            "--maxclientsperip",
            str(SESSION_LIMIT),
            "--maxclientsnumber",
            "50",
            "--minuid",
            "1",
            "--pidfile",
            str(self.work / "pure-ftpd.pid"),
        ]
        if self.tls != "none":
            # 3: TLS required on the control and the data connections.
            command += ["--tls", "3", "--certfile", f"{self.ca.cert_file},{self.ca.key_file}"]
        return command

    def _configure_pyftpdlib(self, owner: pwd.struct_passwd) -> list[str]:
        command = [
            sys.executable,
            str(Path(__file__).with_name("pyftpd.py")),
            "--port",
            str(self.port),
            "--root",
            str(self.root),
            "--user",
            USER,
            "--password",
            PASSWORD,
            "--max-cons-per-ip",
            str(SESSION_LIMIT),
        ]
        if self.tls != "none":
            command += ["--certfile", str(self.ca.cert_file), "--keyfile", str(self.ca.key_file)]
        return command


def sha512_crypt(password: str) -> str:
    """A crypt(3) SHA-512 hash (Python's crypt module is deprecated)."""
    return subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def versions() -> dict[str, str]:
    """Package versions as unpacked by `make compat-setup`, plus pyftpdlib's."""
    found: dict[str, str] = {}
    listing = DEBS.parent / "versions.txt"
    if listing.exists():
        for line in listing.read_text().splitlines():
            package, _, version = line.partition(" ")
            found[package] = version
    from importlib.metadata import version as package_version

    found["pyftpdlib"] = package_version("pyftpdlib")
    return found


def make_base() -> Path:
    """A directory every server user can traverse (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="ftp-pooler-compat-"))
    base.chmod(0o755)
    return base


def remove_base(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
