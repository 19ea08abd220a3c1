"""``mailtracker demo``: the whole cycle on embedded local servers, with nothing to configure.

It starts an IMAP server on a free loopback port — a private Dovecot generated into a temporary
directory when ``dovecot`` is installed and the demo runs as root, else pymap (the ``demo``
extra), one per unit — and an SMTP capture (aiosmtpd); writes a configuration (units ``cdc``,
lead, and ``soyte``, member; secrets through ``env:`` references) and a temporary SQLite
database; delivers sample notifications; polls; shows the cases and the CDC's digest; sends a
staff reply as Gmail would; polls again; and shows the acknowledgement and the updated case.
Every server is stopped before it returns. The sample people are invented.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from imapclient import IMAPClient
from sqlalchemy import select

from mailtracker.cli.cases import detail, table
from mailtracker.config import Config, load_config
from mailtracker.domain.workflow import local_day
from mailtracker.mail.imap import poll_all_once
from mailtracker.mail.outbox import OutboxSender
from mailtracker.services.alerts import queue_high_risk_alerts
from mailtracker.services.digest import DigestService
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case
from mailtracker.store.queries import find_case, list_cases

HOST = "127.0.0.1"
DOMAIN = "demo.example"
START_TIMEOUT = 20.0
TZ_NAME = "Asia/Ho_Chi_Minh"
SECRET_ENV = "MAILTRACKER_DEMO_SECRET"
STAFF = "epi@cdc.demo.example"
STAFF_NAME = "Nguyễn Thị Lan"
INBOXES = {"cdc": f"cdc-inbox@{DOMAIN}", "soyte": f"soyte-inbox@{DOMAIN}"}
APP_SENDER = "Sức khỏe Việt Nam <thongbao@suckhoe.demo.example>"
APP_SUBJECT = "[Sức khỏe Việt Nam] Thông báo trường hợp khai báo y tế có nguy cơ"


class DemoError(RuntimeError):
    """The demo cannot run here (no IMAP server available, a server did not start...)."""


# -- ports and servers ------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on at the moment of asking."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(port: int, *, up: bool, timeout: float = START_TIMEOUT) -> None:
    """Wait until ``port`` accepts connections (``up``) or refuses them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_listening(port) == up:
            return
        time.sleep(0.05)
    raise DemoError(f"port {port} still {'closed' if up else 'open'} after {timeout:.0f}s")


class ImapServer(Protocol):
    """An embedded IMAP server holding the demo mailboxes."""

    name: str

    def port_of(self, user: str) -> int: ...
    def append(self, user: str, raw: bytes) -> None: ...
    def ports(self) -> list[int]: ...
    def stop(self) -> None: ...


class _Appender:
    passwords: dict[str, str]

    def port_of(self, user: str) -> int:
        raise NotImplementedError

    def append(self, user: str, raw: bytes) -> None:
        """Deliver ``raw`` into ``user``'s INBOX (IMAP APPEND)."""
        client = IMAPClient(HOST, port=self.port_of(user), ssl=False, timeout=30)
        try:
            client.login(user, self.passwords[user])
            client.append("INBOX", raw)
        finally:
            with contextlib.suppress(Exception):
                client.logout()


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


def dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found is None and Path("/usr/sbin/dovecot").exists():
        found = "/usr/sbin/dovecot"
    return found


class DovecotServer(_Appender):
    """A private Dovecot from a generated configuration in its own temporary directory
    (run as root: mail is stored as ``nobody``, logins run as ``dovenull``)."""

    name = "Dovecot"

    def __init__(self, binary: str, users: dict[str, str]) -> None:
        self.binary = binary
        self.passwords = dict(users)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="mailtracker-demo-dovecot-"))
        self.directory.chmod(0o755)
        (self.directory / "mail").mkdir()
        shutil.chown(self.directory / "mail", "nobody", "nogroup")
        (self.directory / "users").write_text(
            "".join(f"{user}:{{PLAIN}}{password}\n" for user, password in users.items())
        )
        self.config_file = self.directory / "dovecot.conf"
        self.config_file.write_text(DOVECOT_CONFIG.format(d=self.directory, port=self.port))
        self.started = False

    def start(self) -> None:
        result = subprocess.run(
            [self.binary, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        if result.returncode != 0:
            raise DemoError(f"dovecot did not start (see {self.directory / 'dovecot.log'})")
        self.started = True
        wait_listening(self.port, up=True)

    def port_of(self, user: str) -> int:
        return self.port

    def ports(self) -> list[int]:
        return [self.port]

    def stop(self) -> None:
        """Kill Dovecot's process group (``dovecot stop`` waits for its children for seconds)."""
        if self.started:
            pid_file = self.directory / "run" / "master.pid"
            try:
                group = os.getpgid(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                group = None
            if group is not None and group != os.getpgid(0):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            else:
                subprocess.run(
                    [self.binary, "-c", str(self.config_file), "stop"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                    check=False,
                )
            self.started = False
            wait_listening(self.port, up=False)
        shutil.rmtree(self.directory, ignore_errors=True)


class PymapServers(_Appender):
    """pymap's in-memory server, one subprocess per mailbox (it serves a single user)."""

    name = "pymap"

    def __init__(self, users: dict[str, str]) -> None:
        self.passwords = dict(users)
        self.processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}

    def start(self) -> None:
        for user, password in self.passwords.items():
            port = free_port()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from pymap.main import main; sys.exit(main())",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--no-tls",
                    "dict",
                    "--demo-user",
                    user,
                    "--demo-password",
                    password,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes[user] = (port, process)
        for port, process in self.processes.values():
            deadline = time.monotonic() + START_TIMEOUT
            while not is_listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise DemoError("pymap did not start (pip install 'mailtracker[demo]')")
                time.sleep(0.05)

    def port_of(self, user: str) -> int:
        return self.processes[user][0]

    def ports(self) -> list[int]:
        return [port for port, _ in self.processes.values()]

    def stop(self) -> None:
        for port, process in self.processes.values():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            wait_listening(port, up=False)
        self.processes.clear()


ServerChoice = Literal["auto", "dovecot", "pymap"]
SERVER_CHOICES: tuple[ServerChoice, ...] = ("auto", "dovecot", "pymap")


@contextlib.contextmanager
def imap_server(users: dict[str, str], choice: ServerChoice = "auto") -> Iterator[ImapServer]:
    """Dovecot when installed and running as root (or asked for), else pymap; stopped on exit."""
    binary = dovecot_binary()
    server: DovecotServer | PymapServers
    if choice == "dovecot" and (binary is None or os.geteuid() != 0):
        raise DemoError("Dovecot is not installed, or the demo is not running as root")
    if binary is not None and os.geteuid() == 0 and choice != "pymap":
        server = DovecotServer(binary, users)
    else:
        try:
            import pymap  # noqa: F401
        except ImportError as error:
            raise DemoError(
                "no IMAP server for the demo: install Dovecot, or pip install 'mailtracker[demo]'"
            ) from error
        server = PymapServers(users)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class SmtpCapture:
    """An aiosmtpd server on a free loopback port keeping every message it accepts."""

    port: int = field(default_factory=free_port)
    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
        return "250 OK"

    def taken(self) -> list[EmailMessage]:
        """The messages received since the last call."""
        with self.lock:
            taken, self.messages = self.messages, []
        return taken


@contextlib.contextmanager
def smtp_capture() -> Iterator[SmtpCapture]:
    try:
        from aiosmtpd.controller import Controller
    except ImportError as error:
        raise DemoError("the demo needs aiosmtpd: pip install 'mailtracker[demo]'") from error
    capture = SmtpCapture()
    controller = Controller(capture, hostname=HOST, port=capture.port)
    controller.start()
    try:
        yield capture
    finally:
        controller.stop()
        wait_listening(capture.port, up=False)


# -- sample mail ------------------------------------------------------------------------------


def _mail(to: str, body: str, *, html: str | None, date: dt.datetime) -> bytes:
    message = EmailMessage()
    message["From"] = APP_SENDER
    message["To"] = to
    message["Subject"] = APP_SUBJECT
    message["Date"] = format_datetime(date)
    message["Message-ID"] = make_msgid(domain="suckhoe.demo.example")
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message.as_bytes()


def _d(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")


@dataclass(frozen=True, slots=True)
class Samples:
    """The sample notifications, by mailbox, and the report ids the reply will use."""

    deliveries: list[tuple[str, bytes]]
    high_risk_id: str
    contact_id: str
    table_id: str


def sample_notifications(now: dt.datetime) -> Samples:
    """Five notifications: a high-risk person (labelled lines) to both units, a contact (a
    two-column HTML table), two people in one HTML table with a header row, and a low-risk
    report to the Department of Health only."""
    today = now.date()
    arrival = today - dt.timedelta(days=3)
    high = (
        "Hệ thống Sức khỏe Việt Nam thông báo trường hợp khai báo y tế có nguy cơ:\n\n"
        "Mã khai báo: SKVN-DEMO-0001\n"
        "Họ và tên: Nguyễn Văn An\n"
        "Năm sinh: 1985\n"
        "Giới tính: Nam\n"
        "Số CMND/CCCD/Hộ chiếu: 212345678\n"
        "Số điện thoại: 0905 123 456\n"
        "Địa chỉ: Thôn 1, xã Tịnh Khê, huyện Sơn Tịnh, tỉnh Quảng Ngãi\n"
        "Triệu chứng: Sốt, ho\n"
        "Đi về từ: Vũ Hán, Trung Quốc\n"
        f"Ngày về: {_d(arrival)}\n"
        f"Ngày khai báo: {_d(today)}\n"
        "Mức độ nguy cơ: Cao\n"
    )
    rows = [
        ("Mã khai báo", "SKVN-DEMO-0002"),
        ("Họ và tên", "Trần Thị Bích"),
        ("Năm sinh", "1992"),
        ("Giới tính", "Nữ"),
        ("Số điện thoại", "+84 935 222 333"),
        ("Xã/Phường", "Phường Nghĩa Chánh"),
        ("Quận/Huyện", "TP Quảng Ngãi"),
        ("Triệu chứng", "Không"),
        ("Tiếp xúc với", "Nguyễn Văn An (về từ Vũ Hán)"),
        ("Ngày khai báo", _d(today)),
    ]
    two_column = (
        "<p>Thông báo trường hợp khai báo y tế có nguy cơ:</p><table border='1'>"
        + "".join(f"<tr><td>{label}</td><td>{value}</td></tr>" for label, value in rows)
        + "</table>"
    )
    header = ("Mã khai báo", "Họ tên", "Năm sinh", "SĐT", "Xã", "Huyện", "Triệu chứng", "Đi về từ")
    people = [
        ("SKVN-DEMO-0003", "Lê Văn Cường", "1978", "0912 444 555", "Tịnh Ấn Tây", "Sơn Tịnh",
         "Không", "Hàn Quốc"),
        ("SKVN-DEMO-0004", "Võ Thị Duyên", "2001", "0983 666 777", "Bình Sơn", "Bình Sơn",
         "Đau họng", "Đà Nẵng"),
    ]  # fmt: skip
    several = (
        "<p>Danh sách khai báo y tế trong ngày:</p><table border='1'><tr>"
        + "".join(f"<th>{label}</th>" for label in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in people)
        + "</table>"
    )
    low = (
        "Mã khai báo: SKVN-DEMO-0005\nHọ và tên: Phạm Thị Em\nNăm sinh: 1960\n"
        "Số điện thoại: 0255 3822 111\nXã/Phường: Nghĩa Dõng\nHuyện: TP Quảng Ngãi\n"
        "Triệu chứng: Không\n"
    )
    sent = now - dt.timedelta(minutes=30)
    cdc, soyte = INBOXES["cdc"], INBOXES["soyte"]
    deliveries = [
        (cdc, _mail(cdc, high, html=None, date=sent)),
        (cdc, _mail(cdc, "Xem bảng trong thư.", html=two_column, date=sent)),
        (cdc, _mail(cdc, "Xem bảng trong thư.", html=several, date=sent)),
        (soyte, _mail(soyte, high, html=None, date=sent)),
        (soyte, _mail(soyte, low, html=None, date=sent)),
    ]
    return Samples(deliveries, "SKVN-DEMO-0001", "SKVN-DEMO-0002", "SKVN-DEMO-0003")


def gmail_reply(digest: EmailMessage, lines: list[str], now: dt.datetime) -> bytes:
    """A staff member's answer to ``digest`` the way Gmail in Vietnamese writes it: to the
    Reply-To address, threaded, the digest quoted below ``Vào ... đã viết:``."""
    original = digest.get_body(preferencelist=("plain",))
    quoted_text = original.get_content() if original is not None else ""
    sent = digest["Date"].datetime if digest["Date"] is not None else now
    attribution = (
        f"Vào {sent.strftime('%d/%m/%Y')} lúc {sent.strftime('%H:%M')} {digest['From']} đã viết:"
    )
    quoted = "\n".join(f"> {line}" if line else ">" for line in quoted_text.splitlines())
    reply = EmailMessage()
    reply["From"] = f"{STAFF_NAME} <{STAFF}>"
    reply["To"] = str(digest["Reply-To"] or digest["From"])
    reply["Subject"] = f"Re: {digest['Subject']}"
    reply["Date"] = format_datetime(now)
    reply["Message-ID"] = make_msgid(domain="cdc.demo.example")
    reply["In-Reply-To"] = str(digest["Message-ID"])
    reply["References"] = str(digest["Message-ID"])
    reply.set_content("\n".join(lines) + f"\n\n{attribution}\n\n{quoted}\n")
    html_lines = "".join(f"<div>{line}</div>" for line in lines)
    reply.add_alternative(
        f'<div dir="ltr">{html_lines}</div><br><div class="gmail_quote">'
        f'<div dir="ltr" class="gmail_attr">{attribution}<br></div>'
        '<blockquote class="gmail_quote">…</blockquote></div>',
        subtype="html",
    )
    return reply.as_bytes()


# -- the tour ---------------------------------------------------------------------------------


def write_config(directory: Path, imap: ImapServer, smtp_port: int, users: dict[str, str]) -> Path:
    """config.toml for the demo; the secrets are ``env:`` references set in this process."""
    os.environ[SECRET_ENV] = secrets.token_hex(16)
    units = []
    for unit_id, role, name, staff in (
        ("cdc", "lead", "Trung tâm Kiểm soát bệnh tật tỉnh Quảng Ngãi (demo)", STAFF),
        ("soyte", "member", "Phòng Nghiệp vụ Y, Sở Y tế (demo)", f"nvy@soyte.{DOMAIN}"),
    ):
        variable = f"MAILTRACKER_DEMO_{unit_id.upper()}_PASSWORD"
        os.environ[variable] = users[INBOXES[unit_id]]
        units.append(
            f'[[units]]\nid = "{unit_id}"\nname = "{name}"\nrole = "{role}"\n'
            f'staff = ["{staff}"]\ndigest_to = ["{staff}"]\ndigest_at = "07:00"\n'
            f'language = "vi"\n\n  [[units.mailboxes]]\n  host = "{HOST}"\n'
            f"  port = {imap.port_of(INBOXES[unit_id])}\n"
            f'  security = "none"\n  username = "{INBOXES[unit_id]}"\n'
            f'  password = "env:{variable}"\n  folder = "INBOX"\n  idle = false\n'
            '  poll_every = "60s"\n'
        )
    path = directory / "config.toml"
    path.write_text(
        f'[tracker]\ndatabase = "sqlite:///mailtracker.db"\ntimezone = "{TZ_NAME}"\n'
        f'case_prefix = "QN"\nlanguage = "vi"\nsecret_key = "env:{SECRET_ENV}"\n\n'
        f'[smtp]\nhost = "{HOST}"\nport = {smtp_port}\nsecurity = "none"\n'
        f'from = "Mailtracker QN <tracker@{DOMAIN}>"\n\n' + "\n".join(units),
        encoding="utf-8",
    )
    return path


def _ref(session_cases: list[Case], report_id: str) -> str:
    return next(case.ref or "" for case in session_cases if case.report_id == report_id)


def _text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    return body.get_content() if body is not None else ""


class Tour:
    """The steps of the demo, printing to ``out``."""

    def __init__(self, config: Config, db: Database, imap: ImapServer, smtp: SmtpCapture,
                 out: TextIO, directory: Path) -> None:  # fmt: skip
        self.config = config
        self.db = db
        self.imap = imap
        self.smtp = smtp
        self.out = out
        self.directory = directory
        self.tz = config.tracker.timezone
        assert config.smtp is not None
        self.sender = OutboxSender(db, config.smtp)
        self.ingestor = Ingestor(db, config, reply_handler=ReplyService(config))

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.say(f"\n== {title} " + "=" * max(0, 72 - len(title)))

    def poll(self) -> None:
        results = poll_all_once(self.config, self.ingestor, timeout=30)
        for name, error in results.items():
            self.say(f"  {name}: {'ok' if error is None else 'FAILED: ' + error}")
        if any(error is not None for error in results.values()):
            raise DemoError("a mailbox could not be polled")
        with self.db.session() as session:  # as the daemon does after each pass
            queue_high_risk_alerts(session, self.config, dt.datetime.now(dt.UTC))

    def flush(self) -> list[EmailMessage]:
        result = self.sender.flush(dt.datetime.now(dt.UTC))
        sent = self.smtp.taken()
        self.say(
            f"  outbox: {result.sent} sent, {result.retrying} to retry, {result.failed} failed"
        )
        for message in sent:
            self.say(f"  -> {message['To']}: {message['Subject']}")
        return sent

    def cases(self) -> list[Case]:
        with self.db.session(read_only=True) as session:
            return list(list_cases(session))

    def run(self, samples: Samples) -> None:
        self.step(f"1. Notifications delivered to the unit mailboxes ({self.imap.name})")
        for mailbox, raw in samples.deliveries:
            self.imap.append(mailbox, raw)
        for mailbox in INBOXES.values():
            count = sum(1 for box, _ in samples.deliveries if box == mailbox)
            self.say(f"  {mailbox}: {count} message(s)")

        self.step("2. mailtracker polls every mailbox")
        self.poll()
        cases = self.cases()
        self.say()
        self.say(table(cases, self.tz))
        high = _ref(cases, samples.high_risk_id)
        self.say(f"\n  {high} came to both units: one case, visible to cdc and soyte.")
        self.say("  High-risk reports raise an immediate alert:")
        self.flush()

        self.step("3. The CDC's morning digest")
        now = dt.datetime.now(dt.UTC)
        DigestService(self.config, self.db).send("cdc", local_day(now, self.tz), now)
        sent = self.flush()
        digest = next(message for message in sent if "Bản tin" in str(message["Subject"]))
        html_part = digest.get_body(preferencelist=("html",))
        html_file = self.directory / "digest-cdc.html"
        html_file.write_text(html_part.get_content() if html_part else "", encoding="utf-8")
        self.say(f"\nSubject: {digest['Subject']}\nReply-To: {digest['Reply-To']}\n")
        self.say(_text_of(digest).rstrip())
        self.say(f"\n  HTML version of the digest: {html_file}")

        self.step("4. A staff member replies from Gmail")
        contact = _ref(cases, samples.contact_id)
        listed = _ref(cases, samples.table_id)
        arrival = next(case.arrival_date for case in cases if case.ref == high)
        lines = [
            f"{high} cách ly tại nhà {_d(arrival) if arrival else ''}".rstrip(),
            f"{contact} theo dõi",
            f"{listed} check 37,2",
            "Cảm ơn anh chị.",
        ]
        for line in lines:
            self.say(f"  | {line}")
        reply = gmail_reply(digest, lines, dt.datetime.now(dt.UTC))
        self.imap.append(INBOXES["cdc"], reply)
        self.say(f"  (sent to {digest['Reply-To']}, quoting the digest below the commands)")

        self.step("5. mailtracker polls again and acknowledges")
        self.poll()
        acks = [m for m in self.flush() if str(m["Auto-Submitted"]).startswith("auto-replied")]
        for ack in acks:
            self.say(f"\nSubject: {ack['Subject']}\n")
            self.say(_text_of(ack).rstrip())

        self.step(f"6. The case {high} now")
        with self.db.session(read_only=True) as session:
            case = find_case(session, high)
            assert case is not None
            self.say(detail(case, self.tz))
        with self.db.session(read_only=True) as session:
            count = len(session.scalars(select(Case.id)).all())
        self.say(f"\n{count} cases in {self.config.tracker.database}")


def run_demo(
    out: TextIO = sys.stdout, *, keep: Path | None = None, server: ServerChoice = "auto"
) -> int:
    """Run the tour; with ``keep``, its files (config, database, digest) stay in that
    directory, else in a temporary one removed at the end except for the HTML digest."""
    started = time.monotonic()
    directory = keep if keep is not None else Path(tempfile.mkdtemp(prefix="mailtracker-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    users = {address: secrets.token_hex(8) for address in INBOXES.values()}
    saved_env = {name: os.environ.get(name) for name in _env_names()}
    try:
        with imap_server(users, server) as imap, smtp_capture() as smtp:
            ports = [*imap.ports(), smtp.port]
            config_file = write_config(directory, imap, smtp.port, users)
            config = load_config(config_file)
            db = open_database(config.tracker.database)
            try:
                tour = Tour(config, db, imap, smtp, out, directory)
                tour.run(sample_notifications(dt.datetime.now(config.tracker.timezone)))
            finally:
                db.dispose()
        still = [port for port in ports if is_listening(port)]
        print(
            f"\nAll servers stopped (ports {', '.join(map(str, ports))} closed: "
            f"{'yes' if not still else 'NO: ' + str(still)}); "
            f"demo took {time.monotonic() - started:.1f}s.",
            file=out,
        )
    finally:
        _restore_env(saved_env)
        if keep is None:
            _keep_only(directory, "digest-cdc.html")
    if keep is not None:
        print(f"Files kept in {directory}; look again with: mailtracker --config "
              f"{directory / 'config.toml'} cases", file=out)  # fmt: skip
    return 0


def _env_names() -> list[str]:
    return [SECRET_ENV, *(f"MAILTRACKER_DEMO_{unit.upper()}_PASSWORD" for unit in INBOXES)]


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _keep_only(directory: Path, name: str) -> None:
    """Remove the demo's temporary files, keeping the HTML digest whose path was printed."""
    for path in directory.iterdir():
        if path.name == name:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
