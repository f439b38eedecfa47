"""Import-time savings: heavy optional extras that a library imports eagerly but aimactl never uses.

Every command pays for its imports (a no-op `aimactl apply` is mostly imports), so a library's optional extra
is kept out while that library loads: `import docker` would import paramiko (and paramiko `invoke`) for an SSH
transport aimactl does not use (it forwards the engine's socket itself); sqlite-utils would import numpy to store
numpy scalars the state DB never holds.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HIDING = threading.RLock()
"""Held while a module is hidden: another thread importing that very module meanwhile would get ImportError,
so every import that hides something, or that a hiding could hit, goes through `without` and waits its turn."""


@contextmanager
def without(*names: str) -> Iterator[None]:
    """While the block runs, `import NAME` raises ImportError for each of `names` not imported yet (the library
    being imported then does without that extra); afterwards they import normally again. Blocks run one at a
    time across threads."""
    with _HIDING:
        hidden = [name for name in names if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # the import system's "known to be missing"
        try:
            yield
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
