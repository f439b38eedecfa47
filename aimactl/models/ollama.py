"""Ollama's model API as aimactl reads it: which models a server has (`GET /api/tags`) and what the lines of a
streamed `POST /api/pull` say. Pure parsers; the requests are sent by converge/models.py.

Shapes, from Ollama's docs/api.md and a real server:

- `/api/tags`: `{"models": [{"name": "qwen2.5:0.5b", "model": "qwen2.5:0.5b", "digest": "...", "size": N, ...}]}`
- `/api/pull` with `"stream": true`: one JSON object per line, `{"status": "pulling manifest"}`,
  `{"status": "pulling 8eeb52dfb3bb", "digest": "sha256:...", "total": N, "completed": M}`,
  `{"status": "verifying sha256 digest"}`, `{"status": "writing manifest"}`, `{"status": "success"}`; a failure
  is a line `{"error": "pull model manifest: file does not exist"}` (or an HTTP error with that body).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DEFAULT_TAG = "latest"
_IMPLICIT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/")


class OllamaError(ValueError):
    """Ollama answered with an error or with something that is not its API."""


def canonical(reference: str) -> str:
    """The name Ollama lists a model under: `library/llama3` and `llama3` are both `llama3:latest`."""
    name = reference.strip()
    for prefix in _IMPLICIT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:{DEFAULT_TAG}"


def parse_tags(body: bytes | str) -> frozenset[str]:
    """The canonical names of the models in a `GET /api/tags` answer."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise OllamaError(f"/api/tags did not answer JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise OllamaError("/api/tags answered without a 'models' list: is this an Ollama server?")
    names = set()
    for item in doc["models"]:
        if isinstance(item, dict):
            for key in ("name", "model"):
                if isinstance(item.get(key), str):
                    names.add(canonical(item[key]))
    return frozenset(names)


@dataclass(frozen=True)
class PullLine:
    """One line of a streamed pull: its status, the bytes of the layer being pulled, or an error."""

    status: str | None = None
    completed: int | None = None
    total: int | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        """The last line of a pull that worked."""
        return self.status == "success"


def parse_pull_line(line: bytes | str) -> PullLine | None:
    """One line of a streamed `POST /api/pull`; None for a blank line."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise OllamaError(f"pull answered a line that is not JSON: {text.strip()[:200]}") from None
    if not isinstance(doc, dict):
        raise OllamaError(f"pull answered an unexpected line: {text.strip()[:200]}")
    if doc.get("error"):
        return PullLine(error=str(doc["error"]))
    status = doc.get("status")
    return PullLine(str(status) if status is not None else None, _count(doc.get("completed")),
                    _count(doc.get("total")))


def _count(value: Any) -> int | None:
    """A byte count from a pull line (an int, never a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_body(body: bytes) -> str:
    """The `error` of an Ollama JSON error body, else the body's first 300 characters."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300]
    return str(doc.get("error")) if isinstance(doc, dict) and doc.get("error") else str(doc)[:300]
