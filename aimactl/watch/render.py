"""Rich renderables for one dashboard frame. Rendering only: `model.dashboard` decided every value.

The frame adapts to the width it is given (a terminal's, or 200 columns when not a terminal): below
`WIDE` columns, long columns (reasons, event messages) become notes under the tables, and every cell is
cut with an ellipsis instead of wrapping, so a row stays one line.
"""

from __future__ import annotations

from typing import Any

from aimactl.watch.model import OUT_OF_SYNC, STALLED, SYNCED, Dashboard, GpuRow, HostRow

WIDE = 120
BAR = 10
NARROW_BAR = 5
SYNC_STYLE = {SYNCED: "green", OUT_OF_SYNC: "yellow", STALLED: "red"}
HEALTH_STYLE = {"running": "green", "degraded": "yellow", "starting": "yellow", "unknown": "dim"}


def bar(fraction: float | None, width: int = BAR) -> str:
    """A text bar `██████····`, or blanks when the value is unknown."""
    if fraction is None:
        return " " * width
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled)


def size(value: int | None) -> str:
    """Bytes in binary units (`512K`, `3.2M`, `14.9G`), `-` when unknown."""
    if value is None:
        return "-"
    for unit, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value}B"


def _colour(fraction: float | None) -> str:
    return "dim" if fraction is None else "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"


def _gauge(fraction: float | None, label: str, width: int = BAR) -> Any:
    """A coloured bar followed by its figure, as one cell (only the figure when there is no fraction)."""
    if fraction is None:
        return cell(label)
    text = cell(bar(fraction, width), _colour(fraction))
    text.append(" " + label)
    return text


def _ratio(used: float | None, total: float | None) -> float | None:
    return used / total if used is not None and total else None


def cell(text: str, style: str = "") -> Any:
    """One table cell: a single line, cut with an ellipsis when its column is narrower (never wrapped)."""
    from rich.text import Text

    return Text(text, style, no_wrap=True, overflow="ellipsis")


def _table(*columns: str, wide: bool = True) -> Any:
    """A borderless table (two spaces between columns, one when narrow). Columns named with a trailing `~`
    give up width first when the frame is narrow (their cells are cut with an ellipsis); others keep theirs."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, expand=False, header_style="bold",
                  padding=(0, 1) if wide else (0, 1, 0, 0))
    for column in columns:
        flexible = column.endswith("~")
        table.add_column(column.rstrip("~"), no_wrap=not flexible, overflow="ellipsis")
    return table


def hosts_table(rows: list[HostRow], wide: bool = True) -> Any:
    """HOST, STATUS (with why, when not simply reachable), CPUs, and RAM in use as a bar (shorter when narrow)."""
    table = _table("HOST", "STATUS~", "CPU", "RAM", wide=wide)
    n = BAR if wide else NARROW_BAR
    for h in rows:
        status = cell(h.status, "green" if h.status == "reachable" else "red")
        if h.detail:
            status.append(f": {h.detail}", "dim")
        cores = f"{h.cpu_count} cores" if h.cpu_count else "-"
        cpu = _gauge(_ratio(h.load, h.cpu_count), f"{h.load:.1f}/{cores}", n) if h.load is not None else cell(cores)
        ram = _ratio(h.mem_used, h.mem_total)
        ram_label = "-" if h.mem_total is None else f"{size(h.mem_used)}/{size(h.mem_total)}"
        table.add_row(cell(h.name), status, cpu, _gauge(ram, ram_label, n))
    return table


def gpus_table(rows: list[GpuRow], wide: bool = True) -> Any:
    """HOST, GPU, UTIL, MEMORY, TEMP and POWER, with bars (shorter when narrow)."""
    table = _table("HOST", "GPU~", "UTIL", "MEMORY", "TEMP", "POWER", wide=wide)
    n = BAR if wide else NARROW_BAR
    for g in rows:
        util = None if g.util_percent is None else g.util_percent / 100
        mem = _ratio(g.mem_used, g.mem_total)
        mem_label = "-" if g.mem_total is None else f"{size(g.mem_used)}/{size(g.mem_total)}"
        temp = "-" if g.temperature_c is None else f"{g.temperature_c:.0f}°C"
        hot = "red" if g.temperature_c is not None and g.temperature_c >= 85 else ""
        power = _ratio(g.power_w, g.power_limit_w)
        power_label = "-" if g.power_w is None else f"{g.power_w:.0f}W" + (
            f"/{g.power_limit_w:.0f}W" if g.power_limit_w else "")
        table.add_row(cell(g.host), cell(f"{g.index} {g.name}"),
                      _gauge(util, "-" if util is None else f"{g.util_percent:.0f}%", n), _gauge(mem, mem_label, n),
                      cell(temp, hot), _gauge(power, power_label, n))
    return table


def workloads_table(frame: Dashboard, wide: bool) -> Any:
    """NAME, HOST, SYNC, HEALTH, RESTARTS, READY, ENDPOINT and REASON; when narrow, RESTARTS is RST, the
    endpoint loses its `http://` and the reasons go under the table."""
    table = _table("NAME", "HOST", "SYNC", "HEALTH", "RESTARTS" if wide else "RST", "READY", "ENDPOINT~",
                   *(["REASON~"] if wide else []), wide=wide)
    for w in frame.workloads:
        endpoint = w.endpoint if wide else w.endpoint.removeprefix("http://")
        cells = [cell(f"{w.kind}/{w.name}"), cell(w.host), cell(w.sync, SYNC_STYLE.get(w.sync, "dim")),
                 cell(w.health, HEALTH_STYLE.get(w.health, "red")), cell(str(w.restarts)),
                 cell(f"{w.ready}/{w.desired}"), cell(endpoint or "-")]
        table.add_row(*cells, *([cell(w.reason, "dim")] if wide else []))
    return table


def models_table(frame: Dashboard, wide: bool) -> Any:
    """MODEL, HOST, CACHED, SIZE, SYNC (and REASON when wide)."""
    table = _table("MODEL", "HOST", "CACHED", "SIZE", "SYNC", *(["REASON~"] if wide else []), wide=wide)
    for m in frame.models:
        table.add_row(cell(m.name), cell(m.host), cell("yes" if m.cached else "no"), cell(size(m.size)),
                      cell(m.sync, SYNC_STYLE.get(m.sync, "dim")), *([cell(m.reason, "dim")] if wide else []))
    return table


def events_table(frame: Dashboard, wide: bool = True) -> Any:
    """TIME, RESOURCE, EVENT, MESSAGE: the newest first."""
    table = _table("TIME", "RESOURCE~", "EVENT", "MESSAGE~", wide=wide)
    for e in frame.events:
        table.add_row(cell(e.time), cell(e.resource), cell(e.kind), cell(e.message))
    return table


def _why(sync: str, reason: str) -> str:
    return reason if reason.startswith(sync) else f"{sync}: {reason}"


def _notes(frame: Dashboard, wide: bool, width: int) -> list[Any]:
    """Plan errors and warnings; when narrow, also why each resource is not Synced (one line each, cut)."""
    lines = []
    if not wide:
        for w in frame.workloads:
            if w.sync in (OUT_OF_SYNC, STALLED):
                lines.append(cell(f"{w.kind}/{w.name}@{w.host}: {_why(w.sync, w.reason)}", SYNC_STYLE[w.sync]))
        for m in frame.models:
            if m.sync in (OUT_OF_SYNC, STALLED):
                lines.append(cell(f"model/{m.name}@{m.host}: {_why(m.sync, m.reason)}", SYNC_STYLE[m.sync]))
    for p in frame.problems:
        lines.append(cell(f"{p.severity}: {p.message}", "red" if p.severity == "error" else "yellow"))
    return lines


def _title(text: str) -> Any:
    from rich.text import Text

    return Text(text, "bold cyan")


def frame_renderable(frame: Dashboard, width: int, footer: str = "") -> Any:
    """The whole frame for a given width: header, hosts, GPUs, Services and Apps, Models, events."""
    from rich.console import Group
    from rich.text import Text

    wide = width >= WIDE
    header = Text.assemble(("aimactl watch", "bold"), f"  stack {frame.stack}  {frame.taken_at}",
                           (f"  {footer}" if footer else "", "dim"))
    header.no_wrap, header.overflow = True, "ellipsis"
    parts: list[Any] = [header, _title("Hosts"), hosts_table(frame.hosts, wide)]
    if frame.gpus:
        parts += [_title("GPUs"), gpus_table(frame.gpus, wide)]
    parts.append(_title("Services and Apps"))
    parts.append(workloads_table(frame, wide) if frame.workloads else Text("none", "dim"))
    if frame.models:
        parts += [_title("Models"), models_table(frame, wide)]
    parts += _notes(frame, wide, width)
    parts += [_title("Events"), events_table(frame, wide) if frame.events else Text("none", "dim")]
    return Group(*parts)


class Frame:
    """A renderable that lays the dashboard out for the width rich offers it (it follows terminal resizes)."""

    def __init__(self, frame: Dashboard, footer: str = ""):
        self.frame = frame
        self.footer = footer

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield frame_renderable(self.frame, options.max_width, self.footer)
