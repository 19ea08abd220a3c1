"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mailtracker.config import Config, ConfigError, load_config


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the configuration named by ``--config``; exit with a clear message when invalid."""
    try:
        return load_config(args.config)
    except ConfigError as error:
        print(f"mailtracker: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
