"""mailtracker: e-mailed public-health risk reports into tracked cases."""

__version__ = "0.1.0"
