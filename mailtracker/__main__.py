"""Allow ``python -m mailtracker``."""

from mailtracker.cli import main

raise SystemExit(main())
