"""A small real HTTP server speaking the part of Ollama's API aimactl uses (the real image cannot be pulled in
the test environment): GET / (health), GET /api/tags, POST /api/pull (streamed JSON lines as Ollama sends
them), POST /api/generate (the warmup; 404 until the model is pulled). Listens on $OLLAMA_HOST and keeps its
models in $OLLAMA_MODELS/models.json, as Ollama keeps them in OLLAMA_MODELS across restarts.

Models it can pull: the names in $FAKE_OLLAMA_LIBRARY (comma-separated); any other gives Ollama's error line.
"""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STORE = os.path.join(os.environ.get("OLLAMA_MODELS", "."), "models.json")
LIBRARY = set(filter(None, os.environ.get("FAKE_OLLAMA_LIBRARY", "").split(",")))
LAYER = 3 * 1024 * 1024


def pulled() -> list[str]:
    try:
        with open(STORE, encoding="utf-8") as handle:
            return list(json.load(handle))
    except (OSError, ValueError):
        return []


def keep(names: list[str]) -> None:
    os.makedirs(os.path.dirname(STORE), exist_ok=True)
    with open(STORE, "w", encoding="utf-8") as handle:
        json.dump(sorted(set(names)), handle)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        print(format % args, flush=True)

    def _json(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/":
            body = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/api/tags":
            models = [{"name": n, "model": n, "modified_at": "2025-05-10T08:06:48.639712648-07:00", "size": 2 * LAYER,
                       "digest": "0a8c266910232fd3291e71e5ba1e058cc5af9d411192cf88b6d30e92b6e73163",
                       "details": {"format": "gguf", "family": "qwen2", "parameter_size": "494.03M",
                                   "quantization_level": "Q4_K_M"}} for n in pulled()]
            self._json(200, {"models": models})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        name = request.get("model") or request.get("name") or ""
        if self.path == "/api/pull":
            self._pull(name, request.get("stream", True))
        elif self.path == "/api/generate":
            if name not in pulled():
                self._json(404, {"error": f"model \"{name}\" not found, try pulling it first"})
            else:
                self._json(200, {"model": name, "response": "hi", "done": True})
        else:
            self._json(404, {"error": "not found"})

    def _pull(self, name: str, stream: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def line(doc: object) -> None:
            data = json.dumps(doc).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        line({"status": "pulling manifest"})
        if name not in LIBRARY:
            line({"error": "pull model manifest: file does not exist"})
        else:
            for digest in ("c5396e06af29", "66b9ea09bd5b"):
                for done in range(0, LAYER + 1, LAYER // 3):
                    line({"status": f"pulling {digest}", "digest": f"sha256:{digest}", "total": LAYER,
                          "completed": done})
                    time.sleep(0.05)
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                line({"status": status})
            keep(pulled() + [name])
        self.wfile.write(b"0\r\n\r\n")


def main() -> None:
    host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    print(f"fake ollama listening on {host}:{port}, library {sorted(LIBRARY)}", flush=True)
    ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
