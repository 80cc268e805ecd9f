"""The monitor page: static files the hub serves (see README.md here).

A package only so that a regular (non-editable) install ships the page with the hub:
the files are package data, found through :data:`MONITOR_DIR`. No Python lives here.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The directory holding ``index.html``, ``style.css`` and ``js/``, wherever installed.
MONITOR_DIR = Path(str(files(__name__)))
