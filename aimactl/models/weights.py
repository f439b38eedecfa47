"""What the controller can learn about each Model's weights before planning, for the GPU memory estimate.

A `file://` source is on the controller; a model already in the local host's cache is too. A GGUF file there
gives its exact weight bytes from the header (aimactl/models/gguf.py); any other file or snapshot directory
gives its size. Models only on other hosts fall back, in the pure planner, to their cache index size or the
Model's `size` hint (aimactl/core/estimate.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from aimactl.core.desired import HostInfo
from aimactl.core.estimate import FROM_FILES, FROM_GGUF, ModelWeights
from aimactl.manifest.load import Resource

WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx")


def _tree_size(path: str) -> int:
    """Bytes of the weight files in a snapshot directory (every file when none looks like weights)."""
    files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)] or files
    return sum(os.path.getsize(f) for f in weights)


def weights_at(path: str) -> ModelWeights | None:
    """Weights of a model file or directory on this machine (None when it is not there)."""
    from aimactl.models.gguf import GgufError, read_gguf_file

    if os.path.isdir(path):
        return ModelWeights(_tree_size(path), FROM_FILES)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as handle:
            is_gguf = handle.read(4) == b"GGUF"
        if is_gguf:
            info = read_gguf_file(path)
            return ModelWeights(info.weight_bytes, FROM_GGUF, info.parameters, tuple(info.tensor_types))
    except (OSError, GgufError):
        pass  # an unreadable or unusual header: the file's size still says roughly how big it is
    return ModelWeights(os.path.getsize(path), FROM_FILES)


def local_candidates(res: Resource, hosts: Mapping[str, HostInfo]) -> list[str]:
    """Where a Model's weights may be on this machine: its `file://` path, then the local hosts' caches."""
    from aimactl.models.sources import cache_path, parse_source

    try:
        source = parse_source(res.spec.source, res.base_dir)
    except ValueError:
        return []
    if source.scheme == "ollama":
        return []
    paths = [source.path] if source.scheme == "file" and source.path else []
    paths += [cache_path(info.data_dir, res.name, source) for info in hosts.values() if info.address == "local"]
    return paths


def model_weights(resources: Sequence[Resource], hosts: Mapping[str, HostInfo]) -> dict[str, ModelWeights]:
    """Model name -> its weights, for every Model whose files this machine can read."""
    out = {}
    for res in resources:
        if res.kind != "Model":
            continue
        for path in local_candidates(res, hosts):
            try:
                found = weights_at(path)
            except OSError:  # unreadable (permissions, a dangling link): the estimate falls back to the hints
                continue
            if found is not None:
                out[res.name] = found
                break
    return out
