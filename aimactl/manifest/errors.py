"""The one error type of manifest handling: a problem at a file, line and column, with a code for machines."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ManifestError:
    """One problem in the manifests. `path` is the field path, e.g. `spec.resources.gpus`."""

    code: str
    message: str
    file: str = "<manifest>"
    line: int | None = None
    column: int | None = None
    path: str = ""

    def location(self) -> str:
        """`file:line:column` as editors and compilers print it."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def __str__(self) -> str:
        field = f" {self.path}:" if self.path else ""
        return f"{self.location()}:{field} {self.message}"

    def to_dict(self) -> dict[str, object]:
        """The JSON form used by `validate -o json`."""
        return asdict(self)


class ManifestInvalid(Exception):
    """Raised when manifests cannot be used; carries every error found, not only the first."""

    def __init__(self, errors: list[ManifestError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
