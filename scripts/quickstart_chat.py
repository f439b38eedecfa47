"""Send one real chat completion to the quickstart's llama.cpp Service and print the answer.

Usage: python scripts/quickstart_chat.py [URL]   (default http://127.0.0.1:9010)
The model has random weights, so the words are nonsense; that they come back proves the stack serves.
"""

from __future__ import annotations

import json
import sys
import urllib.request


def chat(base_url: str, prompt: str) -> str:
    """POST /v1/chat/completions and return the assistant's text."""
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - the local quickstart Service
        answer = json.load(response)
    return str(answer["choices"][0]["message"]["content"])


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9010"
    print(f"chat completion from {url}: {chat(url, 'Say hello.')!r}")
