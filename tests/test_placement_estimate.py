"""The GGUF header reader against files written by the `gguf` package (F32 from scripts/make_tiny_gguf.py, and
quantised Q8_0 / Q4_0 / F16 tensors), its type table against ggml's, the weights the controller reads from local
files, and how GPU ids reach Docker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aimactl.core.containers import GpuRequest
from aimactl.core.estimate import FROM_FILES, FROM_GGUF
from aimactl.models.gguf import GGML_TYPES, GgufError, read_gguf_file
from aimactl.models.weights import weights_at

ROOT = Path(__file__).parent.parent


def test_type_table_matches_ggml() -> None:
    from gguf.constants import GGML_QUANT_SIZES

    theirs = {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}
    assert {k: v for k, v in theirs.items() if k in GGML_TYPES} == GGML_TYPES
    assert {k: v for k, v in theirs.items() if k not in GGML_TYPES} == {
        k: v for k, v in theirs.items() if v[0] in ("NVFP4", "Q1_0")}, "only the newest types are left out"


def test_tiny_model_from_the_quickstart_generator(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "tiny.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_gguf.py"), str(path)], check=True,
                   capture_output=True)
    info = read_gguf_file(str(path))
    reader = gguf.GGUFReader(str(path))
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors)
    assert info.weight_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert (info.version, info.architecture, info.tensor_types) == (3, "llama", {"F32": len(reader.tensors)})


def test_quantised_tensors(tmp_path: Path) -> None:
    import gguf
    from gguf.quants import quantize

    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"t{i}" for i in range(3000)])  # a long string array in the metadata to skip
    rng = np.random.default_rng(0)
    for name, qtype in (("a", gguf.GGMLQuantizationType.Q8_0), ("b", gguf.GGMLQuantizationType.Q4_0),
                        ("c", gguf.GGMLQuantizationType.Q8_0)):
        data = quantize(rng.standard_normal((64, 256)).astype(np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.add_tensor("d", rng.standard_normal((8, 32)).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf_file(str(path))
    reader = gguf.GGUFReader(str(path))
    assert info.weight_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert info.parameters == 3 * 64 * 256 + 8 * 32
    assert info.tensor_types == {"F16": 1, "Q4_0": 1, "Q8_0": 2}
    assert info.weight_bytes == 2 * 64 * 256 // 32 * 34 + 64 * 256 // 32 * 18 + 8 * 32 * 2


@pytest.mark.parametrize("content, message", [(b"PK\x03\x04 not a model", "not a GGUF file"),
                                              (b"GGUF\x01\x00\x00\x00", "GGUF version 1 is not supported"),
                                              (b"GGUF\x03\x00\x00\x00\x01", "cut short")])
def test_bad_headers_are_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GgufError, match=message):
        read_gguf_file(str(path))


def test_weights_read_on_this_machine(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_gguf.py"), str(model)], check=True,
                   capture_output=True)
    found = weights_at(str(model))
    assert found is not None and (found.source, found.bytes) == (FROM_GGUF, 465152)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "model-00001.safetensors").write_bytes(b"x" * 1000)
    (snapshot / "config.json").write_text("{}")
    found = weights_at(str(snapshot))
    assert found is not None and (found.source, found.bytes) == (FROM_FILES, 1000)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00")
    found = weights_at(str(broken))
    assert found is not None and (found.source, found.bytes) == (FROM_FILES, 8)
    assert weights_at(str(tmp_path / "absent.gguf")) is None


def test_gpu_ids_reach_docker_as_device_requests() -> None:
    from aimactl.runtimes.docker import _device_requests

    (request,) = _device_requests(GpuRequest(device_ids=("1", "3"))) or []
    assert (request["DeviceIDs"], request["Capabilities"], request.get("Count")) == (["1", "3"], [["gpu"]], 0)
    (counted,) = _device_requests(GpuRequest(count=2)) or []
    assert (counted["Count"], counted["Capabilities"]) == (2, [["gpu"]])
    assert _device_requests(None) is None


def test_unreadable_weights_are_skipped_not_a_crash(tmp_path: Path) -> None:
    """A snapshot in the local cache with a dangling link: its size cannot be read, and planning goes on."""
    from aimactl.core.desired import HostInfo
    from aimactl.manifest import load_manifests
    from aimactl.models.sources import cache_path, parse_source
    from aimactl.models.weights import model_weights

    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: aima.dev/v1\nkind: Model\nmetadata: {name: m}\n"
                        "spec: {source: 'hf://Qwen/Qwen2.5-0.5B-Instruct'}\n")
    loaded = load_manifests([str(manifest)])
    assert loaded.valid, loaded.errors
    snapshot = Path(cache_path(str(tmp_path / "d"), "m", parse_source("hf://Qwen/Qwen2.5-0.5B-Instruct", ".")))
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(OSError):
        weights_at(str(snapshot))
    assert model_weights(loaded.resources, {"local": HostInfo("local", data_dir=str(tmp_path / "d"))}) == {}
