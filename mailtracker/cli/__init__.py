"""The ``mailtracker`` command line: a thin layer over the services.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``handler`` to a function ``(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from mailtracker import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "parse",
    "configcheck",
    "cases",
    "importing",
    "db",
    "poll",
    "run",
    "digest",
    "outbox",
    "apply",
    "export",
    "status",
    "demo",
    "purge",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailtracker",
        description="Turn e-mailed risk reports into tracked cases.",
    )
    parser.add_argument("--version", action="version", version=f"mailtracker {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $MAILTRACKER_CONFIG or ./config.toml)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: INFO; personal data is only ever logged at DEBUG)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mailtracker.cli.{name}").register(subparsers)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        status: int = args.handler(args)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (``mailtracker cases | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return status
