"""``mailtracker check-config``: validate the configuration and resolve every secret."""

from __future__ import annotations

import argparse
import sys

from mailtracker.cli.common import config_from_args
from mailtracker.config import Config, ConfigError, Secret
from mailtracker.services.status import login_results


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate the configuration, resolve every secret and try every login",
        description=(
            "Validate the configuration, resolve every secret reference, then log in to every "
            "mailbox and to the SMTP server. Exit 0 when all is well, 1 otherwise."
        ),
    )
    parser.add_argument(
        "--no-login", action="store_true", help="check the file and secrets only, offline"
    )
    parser.set_defaults(handler=run)


def secrets(config: Config) -> list[Secret]:
    """Every secret reference the configuration holds."""
    found: list[Secret | None] = [config.tracker.secret_key]
    if config.smtp is not None:
        found.append(config.smtp.password)
    for mailbox in config.mailboxes:
        found.extend((mailbox.password, mailbox.oauth2_token))
    return [secret for secret in found if secret is not None]


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.smtp is None:
        print(
            "note: no [smtp] section: digests, alerts and acknowledgements cannot be sent",
            file=sys.stderr,
        )
    problems = 0
    for secret in secrets(config):
        try:
            secret.reveal()
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            problems += 1
    where = config.path or "configuration"
    if not problems and not args.no_login:
        for result in login_results(config):
            if result.ok:
                print(f"{result.server}: {result.message}")
            else:
                print(f"error: {result.server}: {result.message}", file=sys.stderr)
                problems += 1
    if problems:
        print(f"{where}: {problems} problem(s)", file=sys.stderr)
        return 1
    print(f"{where}: OK ({len(config.units)} unit(s), {len(config.mailboxes)} mailbox(es))")
    return 0
