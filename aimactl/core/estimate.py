"""How much GPU memory a Service needs, and where the figure comes from.

`resources.gpuMemory` when the Service declares it ("declared"); else the Model's weights x 1.2 (room for the
KV cache, activations and the CUDA context) plus the engine's footprint from the catalog: the weights come from
the GGUF header when one could be read ("from GGUF header"), else from the weight files' sizes ("from file
sizes": the cached file, the local file, or the Model's `size` hint). No model and no declaration: unknown, and
the plan checks only what it can (GPU counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DECLARED = "declared"
FROM_GGUF = "from GGUF header"
FROM_FILES = "from file sizes"
UNKNOWN = "unknown"
OVERHEAD = 1.2


@dataclass(frozen=True)
class ModelWeights:
    """What is known of a Model's weights, gathered by converge/ from files the controller can read."""

    bytes: int
    source: str
    """FROM_GGUF or FROM_FILES."""
    parameters: int | None = None
    tensor_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Estimate:
    """GPU memory a replica needs in bytes (None: unknown), its source and the arithmetic in words."""

    bytes: int | None
    source: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (plan -o json)."""
        return {"bytes": self.bytes, "source": self.source, "detail": self.detail}


def gib(value: int | None) -> str:
    """`7.5 GiB` (or `?`): how sizes read in plans and checks."""
    return "?" if value is None else f"{value / 2**30:.1f} GiB"


def size_text(value: int) -> str:
    """`454 KiB`, `512 MiB`, `7.5 GiB`: the estimate's arithmetic stays readable for tiny models."""
    if value < 2**20:
        return f"{value / 2**10:.0f} KiB"
    return f"{value / 2**20:.0f} MiB" if value < 2**30 else gib(value)


def _count(value: int) -> str:
    """`8.03B`, `116.3K` parameters."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.{2 if unit == 'B' else 1}f}{unit}"
    return str(value)


def weights_of(model: str | None, known: Mapping[str, ModelWeights], cached_size: int | None,
               size_hint: int | None) -> ModelWeights | None:
    """A Model's weights: read by the controller (GGUF header, local files), else the host cache index's size,
    else the Model's `size` hint."""
    if model is None:
        return None
    if model in known:
        return known[model]
    for size in (cached_size, size_hint):
        if size:
            return ModelWeights(size, FROM_FILES)
    return None


def estimate(declared: int | None, weights: ModelWeights | None, footprint: int) -> Estimate:
    """The GPU memory estimate of one replica of a Service."""
    if declared is not None:
        return Estimate(declared, DECLARED, f"resources.gpuMemory {gib(declared)}")
    if weights is None:
        return Estimate(None, UNKNOWN, "no resources.gpuMemory and no readable model weights")
    need = int(weights.bytes * OVERHEAD) + footprint
    params = f", {_count(weights.parameters)} parameters" if weights.parameters else ""
    types = f" ({', '.join(weights.tensor_types)})" if weights.tensor_types else ""
    return Estimate(need, weights.source, f"weights {size_text(weights.bytes)}{params}{types} x {OVERHEAD} + "
                                          f"engine footprint {size_text(footprint)}")


def service_estimate(res: Any, known: Mapping[str, ModelWeights], models: Mapping[str, Any],
                     cached_sizes: Mapping[str, int]) -> Estimate:
    """The estimate of a Service (a manifest Resource): declared, else its Model's weights plus the engine
    footprint. `models` are the Model resources by name; `cached_sizes` the host cache index sizes."""
    from aimactl.engines.catalog import EngineError, load_engine
    from aimactl.manifest import units

    spec = res.spec
    declared = units.parse_bytes(spec.resources.gpu_memory) if spec.resources.gpu_memory is not None else None
    if res.kind != "Service":
        return estimate(declared, None, 0)
    try:
        footprint = load_engine(spec.engine).footprint
    except EngineError:
        footprint = 0
    model = models.get(spec.model) if spec.model else None
    hint = units.parse_bytes(model.spec.size) if model is not None and model.spec.size is not None else None
    weights = weights_of(spec.model, known, cached_sizes.get(spec.model or ""), hint)
    return estimate(declared, weights, footprint)
