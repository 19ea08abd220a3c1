"""Real IMAP servers for tests: a private Dovecot instance (pymap where Dovecot is absent).

Both are started from a temporary directory on a free local port and offer the same small
interface (:class:`ImapServer`): users, APPEND, a fast bulk fill, a folder recreated with a new
UIDVALIDITY, and stop/start for outage tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from imapclient import IMAPClient

HOST = "127.0.0.1"
START_TIMEOUT = 15.0

DOVECOT_CONFIG = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = root
default_internal_group = root
default_login_user = dovenull
shutdown_clients = yes
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 0
first_valid_gid = 0
"""


class ServerUnavailable(RuntimeError):
    """No IMAP server can be started here."""


class ImapServer(Protocol):
    """What the tests need of an IMAP server."""

    host: str
    port: int
    name: str
    passwords: dict[str, str]

    def add_user(self, name: str, password: str) -> None: ...
    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> None: ...
    def deliver_maildir(self, user: str, messages: Iterable[bytes]) -> int: ...
    def recreate_folder(self, user: str, folder: str) -> None: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...


def free_port() -> int:
    """A TCP port nobody listens on at the moment of asking."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, *, up: bool, timeout: float = START_TIMEOUT) -> None:
    """Wait until ``port`` accepts connections (``up``) or refuses them (not ``up``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                listening = True
        except OSError:
            listening = False
        if listening == up:
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"port {port} still {'closed' if up else 'open'} after {timeout}s")


class _ImapUsers:
    """Users and APPEND, shared by both servers."""

    host: str
    port: int

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[IMAPClient]:
        """An IMAP session logged in as ``user``."""
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=30)
        try:
            client.login(user, self.passwords[user])
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """APPEND one message to ``folder`` (created when missing)."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw)


class DovecotServer(_ImapUsers):
    """A private Dovecot started from a generated configuration in ``directory``."""

    name = "dovecot"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__()
        self.directory = directory
        self.host = HOST
        self.port = port or free_port()
        self.config_file = directory / "dovecot.conf"
        self.users_file = directory / "users"
        self.mail_dir = directory / "mail"
        self.running = False

    @classmethod
    @contextlib.contextmanager
    def running_in(cls, parent: Path | None = None) -> Iterator[DovecotServer]:
        """Start a server in a fresh temporary directory, stop and remove it afterwards."""
        binary = shutil.which("dovecot") or (
            "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
        )
        if binary is None:
            raise ServerUnavailable("dovecot is not installed (apt-get install dovecot-imapd)")
        directory = Path(tempfile.mkdtemp(prefix="mt-dovecot-", dir=parent))
        server = cls(directory)
        try:
            server.setup()
            server.start()
            yield server
        finally:
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def setup(self) -> None:
        """Write the configuration, make the directories traversable by ``nobody``."""
        for path in [self.directory, *self.directory.parents]:
            if path.stat().st_mode & 0o001 == 0:
                path.chmod(path.stat().st_mode | 0o011)
        self.directory.chmod(0o755)
        self.mail_dir.mkdir()
        shutil.chown(self.mail_dir, "nobody", "nogroup")
        self.users_file.write_text("")
        self.config_file.write_text(DOVECOT_CONFIG.format(d=self.directory, port=self.port))

    def _dovecot(self, *args: str) -> None:
        # The daemon inherits stdout/stderr: files, not pipes, or waiting for it never ends.
        errors = self.directory / "dovecot.stderr"
        with errors.open("wb") as stderr:
            result = subprocess.run(
                ["dovecot", "-c", str(self.config_file), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                timeout=30,
            )
        if result.returncode != 0:
            log = self.directory / "dovecot.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            message = errors.read_text(errors="replace").strip()
            raise ServerUnavailable(
                f"dovecot {' '.join(args) or 'start'} failed: {message}\n{tail}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        self.running = True
        self._dovecot()
        wait_listening(self.port, up=True)

    def _master_pid(self) -> int | None:
        pid_file = self.directory / "run" / "master.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (its client sessions are cut) and wait until the port is closed."""
        if not self.running:
            return
        pid = self._master_pid()
        with contextlib.suppress(ServerUnavailable):
            self._dovecot("stop")
        deadline = time.monotonic() + START_TIMEOUT
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.running = False
        wait_listening(self.port, up=False)

    def add_user(self, name: str, password: str) -> None:
        """Add a login ``name`` with ``password`` (the passwd-file is re-read at each login)."""
        self.passwords[name] = password
        with self.users_file.open("a") as users:
            users.write(f"{name}:{{PLAIN}}{password}\n")

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        base = self.mail_dir / user / "Maildir"
        return base if folder == "INBOX" else base / f".{folder}"

    def deliver_maildir(self, user: str, messages: Iterable[bytes]) -> int:
        """Write messages straight into the INBOX's ``new/`` (much faster than APPEND)."""
        inbox = self.maildir(user)
        for sub in ("cur", "new", "tmp"):
            (inbox / sub).mkdir(parents=True, exist_ok=True)
        count = 0
        for raw in messages:
            name = f"{time.time_ns()}.M{count}P{os.getpid()}_{uuid.uuid4().hex}.mt,S={len(raw)}"
            (inbox / "tmp" / name).write_bytes(raw)
            (inbox / "tmp" / name).rename(inbox / "new" / name)
            count += 1
        for path in [self.mail_dir / user, *(self.mail_dir / user).rglob("*")]:
            shutil.chown(path, "nobody", "nogroup")
        return count

    def recreate_folder(self, user: str, folder: str) -> None:
        """Empty ``folder`` and give it a new UIDVALIDITY.

        Other folders are deleted and created again over IMAP; the INBOX, which IMAP cannot
        delete, has its files and indexes removed while no session is open (the server is
        stopped meanwhile), so Dovecot assigns it the next UIDVALIDITY.
        """
        if folder != "INBOX":
            with self.client(user) as client:
                if client.folder_exists(folder):
                    client.delete_folder(folder)
                client.create_folder(folder)
            return
        was_running = self.running
        self.stop()
        inbox = self.maildir(user)
        for entry in inbox.iterdir() if inbox.exists() else ():
            if entry.name in ("cur", "new", "tmp") or entry.name.startswith("dovecot."):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            elif entry.name == "dovecot-uidlist":
                entry.unlink()
        self.deliver_maildir(user, [])
        if was_running:
            self.start()


class PymapServer(_ImapUsers):
    """pymap's in-memory server: one user, APPEND only; for machines without Dovecot."""

    name = "pymap"

    def __init__(self) -> None:
        super().__init__()
        self.host = HOST
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.user: tuple[str, str] | None = None

    @classmethod
    @contextlib.contextmanager
    def running_in(cls, parent: Path | None = None) -> Iterator[PymapServer]:
        del parent
        if shutil.which("pymap") is None:
            raise ServerUnavailable("neither dovecot nor pymap is installed")
        server = cls()
        try:
            yield server
        finally:
            server.stop()

    def add_user(self, name: str, password: str) -> None:
        """The one user this server holds; the server starts with it."""
        if self.user is not None:
            raise ServerUnavailable("pymap serves a single user: this test needs Dovecot")
        self.user = (name, password)
        self.passwords[name] = password
        self.start()

    def start(self) -> None:
        if self.process is not None or self.user is None:
            return
        name, password = self.user
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pymap",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--no-tls",
                "dict",
                "--demo-user",
                name,
                "--demo-password",
                password,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, up=True)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        wait_listening(self.port, up=False)

    def deliver_maildir(self, user: str, messages: Iterable[bytes]) -> int:
        """No Maildir here: APPEND each message in one session."""
        count = 0
        with self.client(user) as client:
            for raw in messages:
                client.append("INBOX", raw)
                count += 1
        return count

    def recreate_folder(self, user: str, folder: str) -> None:
        if folder == "INBOX":
            raise ServerUnavailable("pymap cannot recreate the INBOX: this test needs Dovecot")
        with self.client(user) as client:
            if client.folder_exists(folder):
                client.delete_folder(folder)
            client.create_folder(folder)


@contextlib.contextmanager
def imap_server(parent: Path | None = None) -> Iterator[ImapServer]:
    """Dovecot when installed; else pymap, except in CI (``CI=true``) where Dovecot is required."""
    dovecot_installed = shutil.which("dovecot") is not None or Path("/usr/sbin/dovecot").exists()
    if dovecot_installed:
        with DovecotServer.running_in(parent) as dovecot:
            yield dovecot
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise ServerUnavailable("CI requires Dovecot: apt-get install dovecot-imapd")
    with PymapServer.running_in(parent) as pymap:
        yield pymap
