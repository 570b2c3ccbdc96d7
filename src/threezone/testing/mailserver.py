"""Throwaway real mail servers on loopback: Dovecot (IMAP, LMTP, SASL) and Postfix (SMTP).

Tests and benchmarks exercise the IMAP and SMTP connectors against the servers users
meet, not against fakes. :class:`MailServers` writes a private configuration under a
temporary directory, starts both daemons on random loopback ports, waits until every
port answers, and stops them again (``with MailServers.start() as servers: ...``).

* **Dovecot**: IMAP with STARTTLS (``imap_port``) and implicit TLS (``imaps_port``),
  one passwd-file user, Maildir storage under the temporary directory, LMTP for Postfix
  to deliver into, and its auth service as Postfix's SASL backend.
* **Postfix**: SMTP submission with STARTTLS (``smtp_port``) and implicit TLS
  (``smtps_port``); AUTH only over TLS; mail for :data:`TEST_DOMAIN` goes to Dovecot
  over LMTP, so a sent message can be fetched back; relaying anywhere else is refused
  at ``RCPT TO`` (even for authenticated clients) and, as a second fence, the
  default transport is ``error:``, so nothing can leave the machine.
* **TLS**: a throwaway CA and a server certificate for :data:`MAIL_HOST` made with
  ``cryptography``; ``ca_file`` is the CA to trust. Clients resolve ``MAIL_HOST`` to
  127.0.0.1 themselves (a static resolver), so certificate names are really checked.

Dovecot starts as root (mail owned by the ``dovecot`` user, since Dovecot refuses
mail access as uid 0) or as any other user (everything runs as that user). Postfix
refuses to start unless run as root: ``MailServers.start(smtp=False)`` runs Dovecot
alone, and :func:`missing` says why something cannot run, for a test's skip reason.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import grp
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from threezone.config.schema import (
    EgressConfig,
    EgressRule,
    EmailChannelConfig,
    ImapConfig,
    SmtpConfig,
    TlsMode,
)
from threezone.executor.egress import Egress, StaticResolver
from threezone.executor.secrets import SecretStore

MAIL_HOST = "mail.test.example"
TEST_DOMAIN = "test.example"
USER = f"owner@{TEST_DOMAIN}"
PASSWORD = "correct horse battery staple 42"  # noqa: S105 (a throwaway test account)
START_TIMEOUT = 30.0

_DOVECOT = "/usr/sbin/dovecot"
_DOVECOT_IMAP = "/usr/lib/dovecot/imap"
_DOVECOT_LMTP = "/usr/lib/dovecot/lmtp"
_POSTFIX = "/usr/sbin/postfix"


def missing(*, smtp: bool = True) -> str | None:
    """Why the servers cannot run here (binaries absent; Postfix without root), or None."""
    binaries = (_DOVECOT, _DOVECOT_IMAP, _DOVECOT_LMTP, *((_POSTFIX,) if smtp else ()))
    absent = [path for path in binaries if not os.access(path, os.X_OK)]
    if absent:
        packages = "dovecot-imapd dovecot-lmtpd postfix"
        return f"{', '.join(absent)} not installed (apt-get install {packages})"
    if smtp and os.geteuid() != 0:
        return "postfix only starts as root"
    return None


class MailServerError(RuntimeError):
    """A test server did not start; carries the tail of its log."""


@dataclass(frozen=True, slots=True)
class MailServers:
    """Running servers: ports on 127.0.0.1, the account, and where things live."""

    root: Path
    ca_file: Path
    imap_port: int
    imaps_port: int
    lmtp_port: int
    smtp_port: int
    smtps_port: int
    sasl_port: int
    user: str = USER
    password: str = PASSWORD

    @property
    def maildir(self) -> Path:
        """The user's INBOX as a Maildir (tests may drop messages straight into ``new/``)."""
        return self.root / "mail" / self.user

    @classmethod
    @contextmanager
    def start(cls, *, smtp: bool = True) -> Iterator[MailServers]:
        """Start Dovecot (and Postfix, if ``smtp``) in a fresh directory; stop and remove
        them after. Dovecot runs as any user; Postfix needs root (``smtp_port`` is 0
        when it was not started)."""
        reason = missing(smtp=smtp)
        if reason is not None:
            raise MailServerError(reason)
        root = Path(tempfile.mkdtemp(prefix="threezone-mail-"))
        try:
            imap, imaps, lmtp, smtp_port, smtps, sasl = _free_ports(6)
            if not smtp:
                smtp_port = smtps = 0
            servers = cls(root, root / "ca.pem", imap, imaps, lmtp, smtp_port, smtps, sasl)
            _write_tls(root, servers.ca_file)
            with _dovecot(servers), _postfix(servers) if smtp else contextlib.nullcontext():
                yield servers
        finally:
            shutil.rmtree(root, ignore_errors=True)

    # Client side: what a connector needs to reach these servers ------------------------

    def channel_config(
        self,
        *,
        imap_tls: TlsMode = "tls",
        smtp_tls: TlsMode = "tls",
        host: str = MAIL_HOST,
        idle: bool = True,
        poll_seconds: float = 1.0,
        start: Literal["new", "all"] = "all",
    ) -> EmailChannelConfig:
        """An ``[channels.email]`` section for these servers (``authserv_id`` = MAIL_HOST)."""
        return EmailChannelConfig(
            source="imap",
            account=self.user,
            authserv_id=MAIL_HOST,
            imap=ImapConfig(
                host=host,
                port=self.imaps_port if imap_tls == "tls" else self.imap_port,
                tls=imap_tls,
                username=self.user,
                idle=idle,
                poll_seconds=poll_seconds,
                start=start,
                ca_file=str(self.ca_file),
            ),
            smtp=SmtpConfig(
                host=host,
                port=self.smtps_port if smtp_tls == "tls" else self.smtp_port,
                tls=smtp_tls,
                username=self.user,
                ca_file=str(self.ca_file),
            ),
        )

    def egress(self, names: Mapping[str, str] | None = None, *extra_ports: int) -> Egress:
        """Egress allowing connectors ``imap`` and ``smtp`` to these ports, under the given
        host names (default: MAIL_HOST) resolved statically (default: 127.0.0.1)."""
        answers = dict(names) if names is not None else {MAIL_HOST: "127.0.0.1"}
        ports = (self.imap_port, self.imaps_port, self.smtp_port, self.smtps_port, *extra_ports)
        rules = [
            EgressRule(connector=connector, host=host, port=port)
            for connector in ("imap", "smtp")
            for host in answers
            for port in ports
        ]
        resolver = StaticResolver({host: [address] for host, address in answers.items()})
        return Egress(EgressConfig(allow=rules, allow_private=["127.0.0.0/8"]), resolver)

    def secrets(self, password: str | None = None) -> SecretStore:
        """``EMAIL_PASSWORD`` = the account's password (or ``password``)."""
        return SecretStore({"EMAIL_PASSWORD": self.password if password is None else password})

    def deliver(self, raw: bytes, sender: str = "partner@partner.example") -> None:
        """Deliver over LMTP, as Postfix does: Dovecot stores it and wakes IDLE clients."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port) as lmtp:
            lmtp.sendmail(sender, [self.user], raw)

    def deliver_file(self, raw: bytes, name: str) -> Path:
        """Put ``raw`` into the INBOX Maildir as a new message (as a delivery agent would)."""
        new = self.maildir / "new"
        new.mkdir(parents=True, exist_ok=True)
        tmp = self.maildir / "tmp" / name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(raw)
        _chown_mail(tmp)
        target = new / name
        tmp.rename(target)
        return target

    def stop_dovecot(self) -> None:
        """Stop Dovecot only (to break connections mid-test); :meth:`start_dovecot` again."""
        pid = _read_pid(self.root / "dovecot-run" / "master.pid")
        _run([_DOVECOT, "-c", str(self.root / "dovecot.conf"), "stop"], self.root, check=False)
        _wait_closed(self.imap_port)
        _wait_exited(pid)
        # The master is gone; some of its children (one per client connection among
        # them) linger. End them, so a test sees its connection really dropped.
        for child in _instance_pids(_instance_name(self)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
            _wait_exited(child)

    def start_dovecot(self) -> None:
        _start_dovecot(self)


# --- ports ------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (held together, so all distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_for(ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not all(_answers(port) for port in ports):
        if time.monotonic() > deadline:
            raise MailServerError(f"ports {ports} never answered; log:\n{_tail(log)}")
        time.sleep(0.05)


def _wait_closed(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while _answers(port) and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run(argv: list[str], root: Path, *, check: bool = True) -> None:
    """Run a daemon's control command; output goes to a file, since the daemon it
    starts inherits and keeps open whatever stdout and stderr it was given."""
    output = root / "commands.log"
    with output.open("ab") as sink:
        done = subprocess.run(
            argv,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            timeout=START_TIMEOUT,
            check=False,
        )
    if check and done.returncode != 0:
        raise MailServerError(f"{' '.join(argv)} failed:\n{_tail(output)}")


# --- TLS --------------------------------------------------------------------------------


def _write_tls(root: Path, ca_file: Path) -> None:
    """A CA (written to ``ca_file``) and a server certificate for MAIL_HOST signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "threezone test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MAIL_HOST)])
    cert = (
        _builder(name, ca_name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(MAIL_HOST)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path = root / "key.pem"
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- Dovecot ----------------------------------------------------------------------------


def _mail_owner() -> tuple[int, int, str]:
    """Who owns the mail: ``dovecot`` when root (mail as uid 0 is refused), else us."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam("dovecot")
        return entry.pw_uid, entry.pw_gid, entry.pw_name
    return os.getuid(), os.getgid(), getpass.getuser()


def _chown_mail(path: Path) -> None:
    uid, gid, _name = _mail_owner()
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _dovecot_conf(servers: MailServers) -> str:
    root = servers.root
    uid, gid, user = _mail_owner()
    return f"""\
base_dir = {root}/dovecot-run
state_dir = {root}/dovecot-state
instance_name = {_instance_name(servers)}
log_path = {root}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {user}
default_internal_group = {grp.getgrgid(gid).gr_name}
default_login_user = {user}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{root}/mail/%u
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {servers.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {servers.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {servers.lmtp_port}
  }}
}}
service auth {{
  inet_listener sasl {{
    address = 127.0.0.1
    port = {servers.sasl_port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"""


@contextmanager
def _dovecot(servers: MailServers) -> Iterator[None]:
    root = servers.root
    root.chmod(0o755)  # the mail owner and Postfix's own user must reach their files
    uid, gid, _user = _mail_owner()
    for sub in ("mail", "home", "dovecot-state"):
        (root / sub).mkdir()
        if os.geteuid() == 0:
            os.chown(root / sub, uid, gid)
    (root / "passwd").write_text(f"{servers.user}:{{PLAIN}}{servers.password}::::::\n")
    (root / "dovecot.conf").write_text(_dovecot_conf(servers))
    _start_dovecot(servers)
    try:
        yield
    finally:
        servers.stop_dovecot()


def _start_dovecot(servers: MailServers) -> None:
    _run([_DOVECOT, "-c", str(servers.root / "dovecot.conf")], servers.root)
    ports = [servers.imap_port, servers.imaps_port, servers.lmtp_port, servers.sasl_port]
    _wait_for(ports, servers.root / "dovecot.log")


# --- Postfix ----------------------------------------------------------------------------


def _postfix_main(servers: MailServers) -> str:
    root = servers.root
    return f"""\
compatibility_level = 3.6
queue_directory = {root}/postfix-queue
data_directory = {root}/postfix-data
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = {MAIL_HOST}
mydomain = {TEST_DOMAIN}
myorigin = $mydomain
mydestination =
mynetworks =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_host_lookup = native
disable_dns_lookups = yes
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {TEST_DOMAIN}
virtual_mailbox_maps =
virtual_transport = lmtp:inet:127.0.0.1:{servers.lmtp_port}
default_transport = error:this test server delivers nowhere outside {TEST_DOMAIN}
relay_transport = error:this test server relays nothing
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{servers.sasl_port}
smtpd_tls_cert_file = {root}/cert.pem
smtpd_tls_key_file = {root}/key.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_banner = $myhostname ESMTP threezone-test
biff = no
smtpd_error_sleep_time = 0
"""


_MASTER = """\
127.0.0.1:{smtp} inet n - n - - smtpd
127.0.0.1:{smtps} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@contextmanager
def _postfix(servers: MailServers) -> Iterator[None]:
    config = servers.root / "postfix"
    config.mkdir()
    (config / "main.cf").write_text(_postfix_main(servers))
    (config / "master.cf").write_text(
        _MASTER.format(smtp=servers.smtp_port, smtps=servers.smtps_port)
    )
    log = servers.root / "postfix.log"
    (servers.root / "postfix-queue").mkdir()
    (servers.root / "postfix-data").mkdir()
    owner = pwd.getpwnam("postfix")
    os.chown(servers.root / "postfix-data", owner.pw_uid, owner.pw_gid)
    _run([_POSTFIX, "-c", str(config), "check"], servers.root)
    _run([_POSTFIX, "-c", str(config), "start"], servers.root)
    try:
        _wait_for([servers.smtp_port, servers.smtps_port], log)
        yield
    finally:
        pid = _read_pid(servers.root / "postfix-queue" / "pid" / "master.pid")
        _run([_POSTFIX, "-c", str(config), "stop"], servers.root, check=False)
        _wait_exited(pid)


def _instance_name(servers: MailServers) -> str:
    return f"threezone-test-{servers.imap_port}"


def _instance_pids(instance: str) -> list[int]:
    """Processes of this one Dovecot instance (they name it in their title)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"dovecot-{instance}/" in (proc / "cmdline").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_exited(pid: int | None) -> None:
    """Wait for a daemon to exit (``stop`` returns before it has); kill it if it will not."""
    deadline = time.monotonic() + 10
    while pid is not None and time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not merely a zombie that nobody reaped (daemons' parents are gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
