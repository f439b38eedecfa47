"""Import-time savings: heavy optional extras that a library imports eagerly but aimactl never uses.

Every command pays for its imports (a no-op `aimactl apply` is mostly imports), so a library's optional extra
is kept out while that library loads: `import docker` would import paramiko (and paramiko `invoke`) for an SSH
transport aimactl does not use (it forwards the engine's socket itself); sqlite-utils would import numpy to store
numpy scalars the state DB never holds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without(*names: str) -> Iterator[None]:
    """While the block runs, `import NAME` raises ImportError for each of `names` not imported yet (the library
    being imported then does without that extra); afterwards they import normally again."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "known to be missing"
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
