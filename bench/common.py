"""What the benchmarks share: child processes with their own peak RSS, the servers (Dovecot,
a throwaway PostgreSQL cluster), configuration files and results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/servers.py holds the Dovecot helper the tests use
    sys.path.insert(0, str(ROOT))

from tests.servers import DovecotServer, free_port, wait_listening  # noqa: E402

PASSWORD = "bench-imap-password"
SECRET = "bench-secret-key-0123456789abcdef"
ENVIRON = {"BENCH_IMAP_PASSWORD": PASSWORD, "BENCH_SECRET": SECRET}
BATCH_SIZE = 500
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)

__all__ = [
    "BATCH_SIZE",
    "ENVIRON",
    "PASSWORD",
    "ChildResult",
    "DovecotServer",
    "Figure",
    "Results",
    "child_env",
    "free_port",
    "percentile",
    "postgres_cluster",
    "run_child",
    "wait_listening",
    "write_config",
]


@dataclass
class ChildResult:
    """A finished child: what it printed (JSON), its wall time and peak RSS."""

    output: dict[str, Any]
    wall_seconds: float
    max_rss_mb: float


@dataclass
class Figure:
    """One row of the results table: a measured value against its baseline."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None
    baseline_name: str
    goal: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        """The cost relative to the baseline: 1.0 is as fast (or as small) as the baseline,
        2.0 twice as slow (half the rate, twice the time or memory)."""
        if not self.baseline or not self.value:
            return None
        return self.baseline / self.value if self.higher_is_better else self.value / self.baseline


@dataclass
class Results:
    """Every figure of a run, with the machine it ran on."""

    machine: dict[str, str]
    options: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "-"
        print(
            f"  {figure.section}: {figure.name} = {figure.value:.4g} {figure.unit} "
            f"(baseline {figure.baseline if figure.baseline is None else f'{figure.baseline:.4g}'}"
            f", ratio {ratio})",
            flush=True,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "options": self.options,
            "figures": [asdict(f) | {"ratio": f.ratio} for f in self.figures],
            "notes": self.notes,
        }


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours, the benchmark secrets, the checkout importable."""
    env = dict(os.environ) | ENVIRON | dict(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(
    args: Sequence[str], *, timeout: float = 1800, wrapper: Sequence[str] = ()
) -> ChildResult:
    """Run ``python -m bench.child ARGS`` (under ``wrapper``, a command such as a profiler);
    its JSON output, wall time and peak RSS."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "bench.child", *args],
            stdout=out,
            stderr=err,
            cwd=ROOT,
            env=child_env(),
        )
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                raise TimeoutError(f"bench.child {args[0]} took more than {timeout}s")
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"bench.child {args[0]} failed ({process.returncode}):\n{stderr}")
    # The last JSON line: a wrapper (py-spy) may print its own lines after the child's.
    output = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    # The child's own VmHWM; ru_maxrss (kilobytes) would include the parent's peak at fork.
    peak = output.get("max_rss_mb") or usage.ru_maxrss / 1024
    return ChildResult(output, wall, peak)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (inclusive method) of ``values``."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


def write_config(
    path: Path,
    *,
    database: str,
    imap: DovecotServer | None,
    users: Mapping[str, Sequence[str]],
    smtp_port: int | None = None,
    staff: Sequence[str] = ("epi@cdc.example.org",),
    idle: bool = True,
    poll_every: str = "60s",
    parse_workers: int | None = None,
) -> Path:
    """A ``config.toml``: one unit per key of ``users`` (the first ``lead``), each with a
    mailbox on ``imap`` per login listed; secrets through ``env:``; ``parse_workers`` left
    to its default unless given."""
    lines = [
        "[tracker]",
        f'database = "{database}"',
        'timezone = "Asia/Ho_Chi_Minh"',
        'case_prefix = "QN"',
        'secret_key = "env:BENCH_SECRET"',
    ]
    if parse_workers is not None:
        lines.append(f"parse_workers = {parse_workers}")
    lines.append("")
    if smtp_port is not None:
        lines += [
            "[smtp]",
            'host = "127.0.0.1"',
            f"port = {smtp_port}",
            'security = "none"',
            'from = "Mailtracker QN <tracker@example.org>"',
            "",
        ]
    for position, (unit_id, logins) in enumerate(users.items()):
        unit_staff = list(staff) if position == 0 else [f"staff@{unit_id}.example.org"]
        lines += [
            "[[units]]",
            f'id = "{unit_id}"',
            f'name = "Unit {unit_id}"',
            f'role = "{"lead" if position == 0 else "member"}"',
            f"staff = {json.dumps(unit_staff)}",
            f"digest_to = {json.dumps(unit_staff[:1])}",
            'digest_at = "23:59"',
            "",
        ]
        for login in logins:
            assert imap is not None
            lines += [
                "  [[units.mailboxes]]",
                f'  host = "{imap.host}"',
                f"  port = {imap.port}",
                '  security = "none"',
                f'  username = "{login}"',
                '  password = "env:BENCH_IMAP_PASSWORD"',
                f"  idle = {'true' if idle else 'false'}",
                f'  poll_every = "{poll_every}"',
                "",
            ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@contextlib.contextmanager
def postgres_cluster(parent: Path) -> Iterator[str | None]:
    """A throwaway PostgreSQL cluster (fsync off) and an empty database ``mt`` in it: its
    SQLAlchemy URL, or None when PostgreSQL or psycopg is missing or cannot be started."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    binaries = next((b for b in PG_BIN_CANDIDATES if (b / "initdb").exists()), None)
    if binaries is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="mt-bench-pg-", dir=parent))
    directory.chmod(0o755)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(directory, "postgres")
    port = free_port()
    data = directory / "data"

    def pg(*command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*as_postgres, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )

    started = False
    try:
        steps = [
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(directory / "log"),
                "-w",
                "-o",
                f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            [
                str(binaries / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "mt",
            ],
        ]
        for step in steps:
            result = pg(*step)
            if result.returncode != 0:
                print(f"PostgreSQL unavailable: {result.stderr.decode(errors='replace')[-500:]}")
                yield None
                return
            started = started or step[0].endswith("pg_ctl")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mt"
    finally:
        if started:
            pg(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(directory, ignore_errors=True)
