"""Checks that travel with a plan: errors make it infeasible, warnings are for the operator to read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Check:
    """One finding about the plan: `code` for machines, `message` for people."""

    severity: str
    code: str
    message: str
    address: str = ""
    host: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (plan -o json)."""
        return asdict(self)


def error(code: str, message: str, address: str = "", host: str = "") -> Check:
    """An error check: the plan cannot be applied."""
    return Check(ERROR, code, message, address, host)


def warning(code: str, message: str, address: str = "", host: str = "") -> Check:
    """A warning check: applied anyway, shown to the operator."""
    return Check(WARNING, code, message, address, host)
