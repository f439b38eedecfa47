"""The host helper: one stdlib-only script that aimactl ships to a host and runs with the host's python3.

Everything that must happen on a host (hardware probe, model fetch, process supervision) is a verb of
``aimahelper.py``, run as ``python3 aimahelper.py VERB`` (or ``python3 -c SOURCE VERB``) with one JSON object on
stdin and JSON lines on stdout. The protocol is specs/helper.md. This package only hands out the script's text;
connectors decide how to ship and run it.
"""

from __future__ import annotations

from importlib import resources

HELPER_FILENAME = "aimahelper.py"


def helper_source() -> str:
    """The text of aimahelper.py, as packaged with aimactl."""
    return resources.files(__name__).joinpath(HELPER_FILENAME).read_text(encoding="utf-8")


def helper_file() -> str:
    """Path of the packaged aimahelper.py (run as it is on the local host)."""
    from pathlib import Path

    return str(Path(__file__).with_name(HELPER_FILENAME))
