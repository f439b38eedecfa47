"""Download progress during apply: a rich progress bar (size, speed, ETA) per model on a terminal, the plain
progress lines of LineReporter everywhere else (pipes, CI logs), where a redrawn bar would be noise."""

from __future__ import annotations

import sys
from typing import Any

from aimactl.cli.output import console
from aimactl.cli.stack import LineReporter


class BarReporter(LineReporter):
    """LineReporter whose download progress is a live bar per resource; step lines print above the bars."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}

    def progress(self, change: Any, event: dict[str, Any]) -> None:
        """Move the resource's bar to the bytes the helper (or the engine) reported."""
        if event.get("event") != "progress":
            return
        with self.lock:
            if self.bars is None:
                self.bars = _progress_bars()
                self.bars.start()
            task = self.tasks.get(change.address)
            if task is None:
                task = self.tasks[change.address] = self.bars.add_task(change.address, total=event.get("total"))
            self.bars.update(task, completed=event.get("bytes") or 0, total=event.get("total"))

    def finished(self, change: Any, result: Any) -> None:
        """The step's line; the live display stops once no download is left, so later lines print plainly."""
        with self.lock:
            if self.tasks.pop(change.address, None) is not None and not self.tasks and self.bars is not None:
                self.bars.stop()
                self.bars = None
        super().finished(change, result)


def _progress_bars() -> Any:
    """rich's Progress with size done/total, speed and time left, on the commands' console."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console())


def make_reporter() -> LineReporter:
    """Bars on a terminal, lines otherwise."""
    return BarReporter() if sys.stdout.isatty() else LineReporter()
