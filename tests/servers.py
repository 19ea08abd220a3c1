"""Real servers for tests: a private Dovecot instance (pymap where Dovecot is absent), and a
throwaway PostgreSQL cluster (:class:`PostgresCluster`).

Both IMAP servers are started from a temporary directory on a free local port and offer the same
small interface (:class:`ImapServer`): users, APPEND, a fast bulk fill, a folder recreated with a
new UIDVALIDITY, and stop/start for outage tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import psycopg
from imapclient import IMAPClient
from psycopg import sql
from sqlalchemy.engine import make_url

HOST = "127.0.0.1"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
START_TIMEOUT = 15.0

DOVECOT_CONFIG = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = root
default_internal_group = root
default_login_user = dovenull
shutdown_clients = yes
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
{imaps}  chroot =
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


TLS_SETTINGS = """\
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
"""

IMAPS_LISTENER = """\
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
"""


MakeConfig = Callable[..., Path]
"""The ``make_config`` fixture: writes a config.toml for mailboxes on the test server."""


class ServerUnavailable(RuntimeError):
    """No IMAP server can be started here."""


class ImapServer(Protocol):
    """What the tests need of an IMAP server."""

    host: str
    port: int
    name: str
    passwords: dict[str, str]

    def add_user(self, name: str, password: str) -> None: ...
    def client(self, user: str) -> contextlib.AbstractContextManager[IMAPClient]: ...
    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> None: ...
    def uids(self, user: str, folder: str = "INBOX") -> list[int]: ...
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

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        """The UIDs ``folder`` holds now, ascending."""
        with self.client(user) as client:
            client.select_folder(folder, readonly=True)
            return sorted(client.search("ALL"))

    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """APPEND one message to ``folder`` (created when missing)."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw)


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


class DovecotServer(_ImapUsers):
    """A private Dovecot started from a generated configuration in ``directory``."""

    name = "dovecot"

    def __init__(self, directory: Path, *, tls: bool = False) -> None:
        super().__init__()
        self.directory = directory
        self.host = HOST
        self.port = free_port()
        self.tls = tls
        self.ssl_port = free_port() if tls else None
        self.ca_file = directory / "cert.pem" if tls else None
        self.config_file = directory / "dovecot.conf"
        self.users_file = directory / "users"
        self.mail_dir = directory / "mail"
        self.running = False

    @classmethod
    @contextlib.contextmanager
    def running_in(
        cls, parent: Path | None = None, *, tls: bool = False
    ) -> Iterator[DovecotServer]:
        """Start a server in a fresh temporary directory, stop and remove it afterwards.

        With ``tls``, STARTTLS is offered on ``port`` and implicit TLS on ``ssl_port``, with a
        self-signed certificate for 127.0.0.1 in ``ca_file``.
        """
        binary = shutil.which("dovecot") or (
            "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
        )
        if binary is None:
            raise ServerUnavailable("dovecot is not installed (apt-get install dovecot-imapd)")
        directory = Path(tempfile.mkdtemp(prefix="mt-dovecot-", dir=parent))
        server = cls(directory, tls=tls)
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
        if self.tls:
            self._make_certificate()
        self.config_file.write_text(
            DOVECOT_CONFIG.format(
                d=self.directory,
                port=self.port,
                ssl=TLS_SETTINGS.format(d=self.directory) if self.tls else "ssl = no\n",
                imaps=IMAPS_LISTENER.format(port=self.ssl_port) if self.tls else "",
            )
        )

    def _make_certificate(self) -> None:
        """A self-signed certificate valid for 127.0.0.1 and localhost."""
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(self.directory / "key.pem"),
                "-out",
                str(self.directory / "cert.pem"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

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
        """Stop the server abruptly, as a crash or a network cut would: every Dovecot process
        (its own process group) is killed, open sessions die, and the port closes.

        ``dovecot stop`` would take seconds waiting for its children to finish.
        """
        if not self.running:
            return
        pid = self._master_pid()
        group = _process_group(pid) if pid is not None else None
        if group is not None and group != os.getpgid(0):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        else:
            with contextlib.suppress(ServerUnavailable):
                self._dovecot("stop")
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "run" / "master.pid").unlink()
        self.running = False
        wait_listening(self.port, up=False)
        if self.ssl_port is not None:
            wait_listening(self.ssl_port, up=False)

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
                shutil.which("pymap") or "pymap",
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
    """Dovecot when installed; else pymap, except in CI (``CI=true``) where Dovecot is required.

    ``MT_TEST_IMAP_SERVER=pymap`` forces pymap (to exercise the fallback)."""
    dovecot_installed = shutil.which("dovecot") is not None or Path("/usr/sbin/dovecot").exists()
    if dovecot_installed and os.environ.get("MT_TEST_IMAP_SERVER") != "pymap":
        with DovecotServer.running_in(parent) as dovecot:
            yield dovecot
        return
    if IN_CI:
        raise ServerUnavailable("CI requires Dovecot: apt-get install dovecot-imapd")
    with PymapServer.running_in(parent) as pymap:
        yield pymap


# --- PostgreSQL: a throwaway cluster for the test session ------------------------------------

POSTGRES_BIN_ENV = "MT_TEST_POSTGRES_BIN"
POSTGRES_URL_ENV = "MAILTRACKER_TEST_DATABASE_URL"
POSTGRES_HINT = "apt-get install postgresql, or set MT_TEST_POSTGRES_BIN to its bin directory"


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$MT_TEST_POSTGRES_BIN``, else the
    newest Debian ``/usr/lib/postgresql/N/bin``, else wherever ``pg_ctl`` is on the PATH."""
    configured = os.environ.get(POSTGRES_BIN_ENV)
    if configured:
        return Path(configured)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """A PostgreSQL server the tests create their databases on, through the role of ``url``
    (which needs CREATEDB): one fresh database per test, dropped afterwards."""

    def __init__(self, url: str) -> None:
        self.base = make_url(url)
        self.created = 0

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        url = self.base.set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(
            host=self.base.host,
            port=self.base.port,
            user=self.base.username,
            password=self.base.password,
            dbname=self.base.database or "postgres",
            autocommit=True,
        ) as connection:
            connection.execute(statement)

    def create_database(self) -> str:
        """A new empty database; its name (unique also among test runs sharing a server)."""
        self.created += 1
        name = f"mt_test_{os.getpid()}_{self.created}"
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever connections a test left open to it."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class PostgresCluster(PostgresServer):
    """A private PostgreSQL cluster in a temporary directory, on a free local port.

    Run as the ``postgres`` user (through ``runuser``) when the tests run as root, which
    PostgreSQL refuses to be; directly otherwise. No fsync: it is thrown away at the end.
    """

    def __init__(self, directory: Path, bin_dir: Path, *, durable: bool = False) -> None:
        self.directory = directory
        self.bin_dir = bin_dir
        self.durable = durable
        self.host = HOST
        self.port = free_port()
        self.user = "postgres"
        super().__init__(f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres")

    @classmethod
    @contextlib.contextmanager
    def running(cls, *, durable: bool = False) -> Iterator[PostgresCluster]:
        """Create and start a cluster; stop it (``-m immediate``) and remove it afterwards.
        ``durable`` keeps synchronous commits, so a commit survives a crash of the server."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None or not (bin_dir / "initdb").exists():
            raise ServerUnavailable(f"PostgreSQL is not installed ({POSTGRES_HINT})")
        directory = Path(tempfile.mkdtemp(prefix="mt-postgres-"))
        cluster = cls(directory, bin_dir, durable=durable)
        try:
            cluster.setup()
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", self.user, "--", *command] if os.geteuid() == 0 else command

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        # pg_ctl's server inherits stdout/stderr: files, not pipes, or waiting never ends.
        output = self.directory / f"{program}.out"
        with output.open("wb") as sink:
            result = subprocess.run(
                self._command(program, *args),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=self.directory,
            )
        if result.returncode != 0:
            log = self.directory / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServerUnavailable(
                f"{program} failed ({result.returncode}): "
                f"{output.read_text(errors='replace').strip()[-2000:]}\n{tail}"
            )

    def setup(self) -> None:
        """``initdb`` a trust-authenticated cluster whose superuser is ``postgres``."""
        if os.geteuid() == 0:
            try:
                shutil.chown(self.directory, self.user, self.user)
            except LookupError as error:
                raise ServerUnavailable(f"no {self.user!r} user to run PostgreSQL as") from error
        self._run(
            "initdb", "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses={self.host} "
            "-c fsync=off -c max_connections=200"
        )
        if not self.durable:
            options += " -c synchronous_commit=off -c full_page_writes=off"
        data, log = self.directory / "data", self.directory / "postgres.log"
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self) -> None:
        """Stop at once: the cluster is thrown away, nothing needs flushing."""
        if (self.directory / "data" / "postmaster.pid").exists():
            with contextlib.suppress(ServerUnavailable, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "stop")
