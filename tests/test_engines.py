"""The engine catalog: every YAML loads strictly, and each engine renders exactly its documented command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aimactl.engines.catalog import (
    EngineError,
    HostFacts,
    ModelInfo,
    RenderedEngine,
    engine_names,
    load_engine,
    load_engine_file,
)
from aimactl.engines.render import model_info, render
from aimactl.manifest.kinds import ServiceSpec
from aimactl.models.sources import parse_source

GGUF = ModelInfo("qwen", "/data/models/qwen/qwen2.5-0.5b-instruct-q4_k_m.gguf", format="gguf")
SNAPSHOT = ModelInfo("llama", "/data/models/llama", format="safetensors", is_dir=True)
SAFETENSORS = ModelInfo("llama", "/data/models/llama/model.safetensors", format="safetensors")
OLLAMA = ModelInfo("qwen", None, "qwen2.5:0.5b", format="ollama")
NO_GPU = HostFacts()
ONE_GPU = HostFacts(has_gpu=True, gpu_ids=("0",))
TWO_GPUS = HostFacts(has_gpu=True, gpu_ids=("0", "1"))
SAMPLE = {"vllm": SNAPSHOT, "llamacpp": GGUF, "ollama": OLLAMA, "sglang": GGUF, "tgi": SAFETENSORS}


def spec(engine: str, **fields: Any) -> ServiceSpec:
    """A validated Service spec (manifest keys are camelCase)."""
    data: dict[str, Any] = {"engine": engine, **fields}
    if engine != "custom":
        data.setdefault("model", "qwen")
    return ServiceSpec.model_validate(data)


def docker(engine: str, model: ModelInfo | None = None, host: HostFacts = NO_GPU, **fields: Any) -> RenderedEngine:
    return render(load_engine(engine), spec(engine, **fields), model or SAMPLE.get(engine), host, "docker")


def native(engine: str, model: ModelInfo | None = None, host: HostFacts = NO_GPU, port: int = 9000,
           **fields: Any) -> RenderedEngine:
    return render(load_engine(engine), spec(engine, **fields), model or SAMPLE.get(engine), host, "process",
                  port=port)


# --- the catalog files ------------------------------------------------------------------------------------------

def test_every_yaml_in_the_folder_loads() -> None:
    folder = Path(__file__).parent.parent / "aimactl" / "engines"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert names == sorted(engine_names()) == ["custom", "llamacpp", "ollama", "sglang", "tgi", "vllm"]
    for name in names:
        assert load_engine(name).name == name
        assert load_engine_file(folder / f"{name}.yaml") == load_engine(name)


@pytest.mark.parametrize(("name", "image", "port", "health", "metrics", "footprint"), [
    ("vllm", "vllm/vllm-openai:latest", 8000, "/health", "/metrics", 1536 * 2**20),
    ("llamacpp", "ghcr.io/ggml-org/llama.cpp:server-cuda", 8080, "/health", "/metrics", 256 * 2**20),
    ("ollama", "ollama/ollama:latest", 11434, "/", None, 512 * 2**20),
    ("sglang", "lmsysorg/sglang:latest", 30000, "/health", "/metrics", 1536 * 2**20),
    ("tgi", "ghcr.io/huggingface/text-generation-inference:latest", 80, "/health", "/metrics", 2**30),
])
def test_engine_facts(name: str, image: str, port: int, health: str, metrics: str | None, footprint: int) -> None:
    engine = load_engine(name)
    assert (engine.image, engine.port, engine.health, engine.metrics, engine.footprint) == \
        (image, port, health, metrics, footprint)
    assert engine.gpu == "docker-gpus"
    assert engine.docs


def test_custom_declares_nothing() -> None:
    engine = load_engine("custom")
    assert (engine.image, engine.port, engine.docker, engine.native, engine.warmup) == (None, None, None, (), None)


def test_unknown_engine() -> None:
    with pytest.raises(EngineError, match="unknown engine 'triton'"):
        load_engine("triton")


# --- docker command lines, pinned flag by flag --------------------------------------------------------------------

DOCKER_ARGV = {
    "vllm": ["--model", "/models", "--served-model-name", "llama", "--host", "0.0.0.0", "--port", "8000"],
    "llamacpp": ["--model", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", "qwen", "--host", "0.0.0.0",
                 "--port", "8080", "--metrics"],
    "ollama": ["serve"],
    "sglang": ["python3", "-m", "sglang.launch_server", "--model-path", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
               "--host", "0.0.0.0", "--port", "30000", "--enable-metrics"],
    "tgi": ["--model-id", "/data/model", "--hostname", "0.0.0.0", "--port", "80"],
}
DOCKER_MOUNTS = {
    "vllm": [("/data/models/llama", "/models", True)],
    "llamacpp": [("/data/models/qwen", "/models", True)],
    "ollama": [],
    "sglang": [("/data/models/qwen", "/models", True)],
    "tgi": [("/data/models/llama", "/data/model", True)],
}


@pytest.mark.parametrize("name", sorted(DOCKER_ARGV))
def test_docker_argv_and_mounts(name: str) -> None:
    rendered = docker(name)
    assert rendered.argv == DOCKER_ARGV[name]
    assert rendered.mounts == DOCKER_MOUNTS[name]
    assert rendered.container_port == load_engine(name).port
    assert rendered.gpu is False and rendered.gpu_ids == ()


def test_vllm_served_name_can_differ_from_the_model_name() -> None:
    model = ModelInfo("qwen", "/data/models/qwen/q.gguf", served_name="Qwen/Qwen2.5", format="gguf")
    assert docker("vllm", model).argv[:4] == ["--model", "/models/q.gguf", "--served-model-name", "Qwen/Qwen2.5"]


def test_ollama_container_env_and_state() -> None:
    rendered = docker("ollama", host=HostFacts(data_dir="/data"))
    assert rendered.env == {"OLLAMA_HOST": "0.0.0.0:11434"}
    assert rendered.mounts == [("/data/models/qwen/ollama", "/root/.ollama", False)]
    assert docker("ollama").mounts == []  # without a data dir the store lives and dies with the container


def test_shared_memory_for_engines_whose_docs_ask_for_it() -> None:
    assert {n: docker(n).shm_size for n in DOCKER_ARGV} == {
        "vllm": 8 * 2**30, "llamacpp": None, "ollama": None, "sglang": 32 * 2**30, "tgi": 2**30}


# --- llama.cpp: images, native commands, --port ------------------------------------------------------------------

def test_llamacpp_image_follows_gpu_assignment() -> None:
    assert docker("llamacpp").image == "ghcr.io/ggml-org/llama.cpp:server"
    assert docker("llamacpp", host=ONE_GPU).image == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert docker("llamacpp", image="example/llama:dev").image == "example/llama:dev"
    assert docker("vllm").image == docker("vllm", host=ONE_GPU).image == "vllm/vllm-openai:latest"


LLAMA_SERVER = ["llama-server", "--model", "/data/models/qwen/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", "qwen",
                "--host", "127.0.0.1", "--port", "9000", "--metrics"]
LLAMA_CPP_PYTHON = ["python3", "-m", "llama_cpp.server", "--model",
                    "/data/models/qwen/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--model_alias", "qwen",
                    "--host", "127.0.0.1", "--port", "9000"]


def test_llamacpp_native_llama_server() -> None:
    host = HostFacts(executables=frozenset({"llama-server"}), python_modules=frozenset({"llama_cpp"}))
    rendered = native("llamacpp", host=host)
    assert rendered.argv == LLAMA_SERVER
    assert (rendered.image, rendered.port, rendered.mounts, rendered.container_port) == (None, 9000, [], None)
    assert (rendered.health_path, rendered.metrics_path) == ("/health", "/metrics")
    assert native("llamacpp").argv == LLAMA_SERVER  # facts unknown: the preferred command


def test_llamacpp_native_python_fallback() -> None:
    host = HostFacts(python="/opt/venv/bin/python", executables=frozenset(), python_modules=frozenset({"llama_cpp"}))
    rendered = native("llamacpp", host=host)
    assert rendered.argv == ["/opt/venv/bin/python", *LLAMA_CPP_PYTHON[1:]]
    assert (rendered.health_path, rendered.metrics_path) == ("/v1/models", None)


def test_llamacpp_native_gpu_flags_per_command() -> None:
    gpu = HostFacts(has_gpu=True, gpu_ids=("1",), executables=frozenset({"llama-server"}))
    assert native("llamacpp", host=gpu).argv == [*LLAMA_SERVER, "--n-gpu-layers", "999"]
    gpu = HostFacts(has_gpu=True, gpu_ids=("1",), executables=frozenset(), python_modules=frozenset({"llama_cpp"}))
    rendered = native("llamacpp", host=gpu)
    assert rendered.argv == [*LLAMA_CPP_PYTHON, "--n_gpu_layers", "-1"]
    assert rendered.env == {"CUDA_VISIBLE_DEVICES": "1"}


def test_llamacpp_native_needs_one_of_its_commands() -> None:
    host = HostFacts(executables=frozenset({"ollama"}), python_modules=frozenset({"numpy"}))
    with pytest.raises(ValueError, match="needs llama-server or the Python module llama_cpp.server"):
        native("llamacpp", host=host)


@pytest.mark.parametrize("render_it", [
    lambda: docker("llamacpp"),
    lambda: docker("llamacpp", host=ONE_GPU, containerPort=8081),
    lambda: native("llamacpp", port=9100),
    lambda: native("llamacpp", host=HostFacts(executables=frozenset(), python_modules=frozenset({"llama_cpp"}))),
])
def test_llamacpp_always_passes_port(render_it: Any) -> None:
    rendered = render_it()
    assert rendered.argv[rendered.argv.index("--port") + 1] == str(rendered.port)


def test_container_port_override_moves_the_listener() -> None:
    rendered = docker("vllm", containerPort=8123)
    assert rendered.port == 8123 and rendered.argv[-2:] == ["--port", "8123"]
    assert docker("ollama", containerPort=11500).env == {"OLLAMA_HOST": "0.0.0.0:11500"}


# --- native command lines of the other engines -------------------------------------------------------------------

NATIVE_ARGV = {
    "vllm": ["vllm", "serve", "/data/models/llama", "--served-model-name", "llama", "--host", "127.0.0.1",
             "--port", "9000"],
    "sglang": ["python3", "-m", "sglang.launch_server", "--model-path",
               "/data/models/qwen/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--host", "127.0.0.1", "--port", "9000",
               "--enable-metrics"],
    "tgi": ["text-generation-launcher", "--model-id", "/data/models/llama", "--hostname", "127.0.0.1",
            "--port", "9000"],
    "ollama": ["ollama", "serve"],
}


@pytest.mark.parametrize("name", sorted(NATIVE_ARGV))
def test_native_argv(name: str) -> None:
    assert native(name, host=HostFacts(data_dir="/data")).argv == NATIVE_ARGV[name]


def test_vllm_native_serves_a_snapshot_directory_under_the_model_name() -> None:
    assert native("vllm").argv[2:5] == ["/data/models/llama", "--served-model-name", "llama"]


def test_ollama_native_env() -> None:
    rendered = render(load_engine("ollama"), spec("ollama"), OLLAMA, HostFacts(data_dir="/data"), "process",
                      port=9005, bind="0.0.0.0")
    assert rendered.env == {"OLLAMA_HOST": "0.0.0.0:9005", "OLLAMA_MODELS": "/data/models/qwen/ollama/models"}
    with pytest.raises(ValueError, match="needs the host's data directory"):
        native("ollama")


def test_process_runtime_needs_a_port() -> None:
    with pytest.raises(ValueError, match="needs the host port"):
        render(load_engine("vllm"), spec("vllm"), SNAPSHOT, NO_GPU, "process")
    assert render(load_engine("vllm"), spec("vllm", port=9300), SNAPSHOT, NO_GPU, "process").port == 9300


# --- GPU flags ----------------------------------------------------------------------------------------------------

# engine -> GPUs assigned -> arguments appended to the docker command line
GPU_FLAGS: dict[str, dict[int, list[str]]] = {
    "vllm": {0: [], 1: [], 2: ["--tensor-parallel-size", "2"]},
    "llamacpp": {0: [], 1: ["--n-gpu-layers", "999"], 2: ["--n-gpu-layers", "999"]},
    "sglang": {0: [], 1: [], 2: ["--tp", "2"]},
    "tgi": {0: [], 1: [], 2: ["--num-shard", "2"]},
    "ollama": {0: [], 1: [], 2: []},
}


@pytest.mark.parametrize("name", sorted(GPU_FLAGS))
@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_gpu_flags_only_when_gpus_are_assigned(name: str, gpus: int) -> None:
    host = {0: NO_GPU, 1: ONE_GPU, 2: TWO_GPUS}[gpus]
    rendered = docker(name, host=host)
    assert rendered.argv == DOCKER_ARGV[name] + GPU_FLAGS[name][gpus]
    assert rendered.gpu is (gpus > 0)
    assert rendered.gpu_ids == host.gpu_ids


def test_gpus_on_a_host_without_gpus_are_refused() -> None:
    with pytest.raises(ValueError, match="without GPUs"):
        docker("vllm", host=HostFacts(gpu_ids=("0",)))


# --- flags never leak to another engine ---------------------------------------------------------------------------

OWN_FLAGS: dict[str, set[str]] = {
    "--served-model-name": {"vllm"}, "--tensor-parallel-size": {"vllm"},
    "--model-id": {"tgi"}, "--num-shard": {"tgi"}, "--hostname": {"tgi"},
    "--model-path": {"sglang"}, "--tp": {"sglang"}, "--enable-metrics": {"sglang"}, "sglang.launch_server": {"sglang"},
    "--n-gpu-layers": {"llamacpp"}, "--n_gpu_layers": {"llamacpp"}, "--alias": {"llamacpp"},
    "--model_alias": {"llamacpp"}, "--metrics": {"llamacpp"}, "llama_cpp.server": {"llamacpp"},
    "--model": {"vllm", "llamacpp"},
}


def _every_argv(name: str) -> list[list[str]]:
    """Every command line an engine can produce: docker and each native command, with 2 GPUs."""
    lines = [docker(name, host=TWO_GPUS).argv]
    for launch in load_engine(name).native:
        program = launch.command[0]
        python = program == "{python}"
        host = HostFacts(has_gpu=True, gpu_ids=("0", "1"), data_dir="/data",
                         executables=frozenset() if python else frozenset({program}),
                         python_modules=frozenset({launch.command[2]}) if python else frozenset())
        lines.append(native(name, host=host).argv)
    return lines


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_engine_flags_never_leak(name: str) -> None:
    lines = _every_argv(name)
    assert len(lines) == 1 + len(load_engine(name).native)
    for argv in lines:
        leaked = {flag: owners for flag, owners in OWN_FLAGS.items() if flag in argv and name not in owners}
        assert leaked == {}, argv


# --- the Service's overrides --------------------------------------------------------------------------------------

def test_service_args_come_after_the_engine_args() -> None:
    args = ["--max-model-len", "4096", "--override-generation-config", '{"temperature": 0.2}']
    rendered = docker("vllm", host=TWO_GPUS, args=args)
    assert rendered.argv == DOCKER_ARGV["vllm"] + ["--tensor-parallel-size", "2"] + args
    assert native("llamacpp", args=["-c", "8192"]).argv == [*LLAMA_SERVER, "-c", "8192"]


@pytest.mark.parametrize("command", [["llama-server", "-m", "/models/x.gguf"], "llama-server -m /models/x.gguf"])
def test_service_command_replaces_the_command(command: Any) -> None:
    rendered = docker("llamacpp", host=ONE_GPU, command=command, args=["--port", "8080"])
    assert rendered.argv == ["llama-server", "-m", "/models/x.gguf", "--port", "8080"]
    assert rendered.mounts == DOCKER_MOUNTS["llamacpp"]  # the model is still mounted where the engine expects it
    assert rendered.health_path == "/health"


def test_service_command_on_the_process_runtime() -> None:
    rendered = native("llamacpp", command="/opt/llama/bin/llama-server -m {model}", args=["--port", "9000"],
                      host=HostFacts(executables=frozenset(), python_modules=frozenset()))
    assert rendered.argv == ["/opt/llama/bin/llama-server", "-m", "{model}", "--port", "9000"]
    assert (rendered.health_path, rendered.metrics_path) == ("/health", "/metrics")
    ollama = render(load_engine("ollama"), spec("ollama", command=["/opt/ollama/bin/ollama", "serve"]), OLLAMA,
                    HostFacts(data_dir="/data"), "process", port=9010)
    assert ollama.argv == ["/opt/ollama/bin/ollama", "serve"]
    assert ollama.env["OLLAMA_HOST"] == "127.0.0.1:9010"  # the engine's env still applies


def test_service_health_path_and_warmup_switch() -> None:
    rendered = docker("vllm", health={"path": "/v1/models", "warmup": False})
    assert (rendered.health_path, rendered.warmup) == ("/v1/models", None)


# --- warmup and pull requests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vllm", "llamacpp", "sglang", "tgi"])
def test_openai_warmup(name: str) -> None:
    warmup = docker(name).warmup
    chat = {"model": SAMPLE[name].name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert warmup is not None
    assert (warmup.method, warmup.path, dict(warmup.body)) == ("POST", "/v1/chat/completions", chat)
    assert docker(name).pull is None


def test_ollama_warmup_and_pull() -> None:
    rendered = docker("ollama")
    assert rendered.warmup is not None and rendered.pull is not None
    assert (rendered.warmup.method, rendered.warmup.path, dict(rendered.warmup.body)) == (
        "POST", "/api/generate",
        {"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
    assert (rendered.pull.method, rendered.pull.path, dict(rendered.pull.body)) == (
        "POST", "/api/pull", {"model": "qwen2.5:0.5b", "stream": True})


def test_warmup_templates_are_not_changed_by_rendering() -> None:
    docker("vllm")
    body = load_engine("vllm").warmup.body  # type: ignore[union-attr]
    assert body["model"] == "{served_name}"


# --- custom engines, models and formats ---------------------------------------------------------------------------

def test_custom_engine_takes_everything_from_the_service() -> None:
    rendered = render(load_engine("custom"), spec("custom", image="example/srv:1", command=["srv", "--listen", ":80"],
                                                  args=["-v"], containerPort=80, health={"path": "/ready"}),
                      None, ONE_GPU, "docker")
    assert (rendered.image, rendered.argv, rendered.port, rendered.health_path) == (
        "example/srv:1", ["srv", "--listen", ":80", "-v"], 80, "/ready")
    assert (rendered.warmup, rendered.metrics_path, rendered.mounts, rendered.env) == (None, None, [], {})
    assert rendered.gpu is True
    bare = render(load_engine("custom"), spec("custom", image="example/srv:1"), None, NO_GPU, "docker")
    assert (bare.argv, bare.port) == ([], None)
    process = render(load_engine("custom"), spec("custom", runtime="process", command="srv --port 9001", port=9001),
                     None, NO_GPU, "process")
    assert (process.argv, process.port, process.image) == (["srv", "--port", "9001"], 9001, None)


@pytest.mark.parametrize(("name", "model", "message"), [
    ("llamacpp", SNAPSHOT, "serves gguf models; model 'llama' is safetensors"),
    ("tgi", GGUF, "serves safetensors, pytorch models"),
    ("ollama", GGUF, "serves ollama models"),
    ("vllm", OLLAMA, "is ollama"),
])
def test_formats_an_engine_cannot_serve(name: str, model: ModelInfo, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        docker(name, model)


def test_an_engine_needs_its_model() -> None:
    with pytest.raises(ValueError, match="needs a model with a file on this host"):
        render(load_engine("vllm"), spec("vllm"), None, NO_GPU, "docker")


def test_engine_and_service_must_agree() -> None:
    with pytest.raises(ValueError, match="uses engine 'vllm', not 'tgi'"):
        render(load_engine("tgi"), spec("vllm"), SNAPSHOT, NO_GPU, "docker")


def test_model_info_from_sources() -> None:
    hf = model_info("qwen", parse_source("hf://Qwen/Qwen2.5-GGUF/q4_k_m.gguf", "/"), "/data")
    assert hf == ModelInfo("qwen", "/data/models/qwen/q4_k_m.gguf", "qwen", "gguf")
    assert model_info("qwen", parse_source("ollama://qwen2.5:0.5b", "/"), "/data", served_name="x") == OLLAMA
    snap = model_info("llama", parse_source("hf://meta/llama", "/"), "/data", served_name="meta/llama")
    assert (snap.host_path, snap.served_name, snap.is_dir) == ("/data/models/llama", "meta/llama", True)


# --- strict catalog files -----------------------------------------------------------------------------------------

GOOD_YAML = """\
name: demo
image: example/demo:1
port: 7000
health: /health
command: [--model, "{model_path}", --port, "{port}"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


def test_a_minimal_engine_file_loads(tmp_path: Path) -> None:
    engine = load_engine_file(_write(tmp_path, GOOD_YAML))
    assert engine.docker is not None and engine.docker.command == ("--model", "{model_path}", "--port", "{port}")
    assert engine.gpu == "docker-gpus" and engine.footprint == 0


@pytest.mark.parametrize(("extra", "message"), [
    ("helth: /health\n", "unknown key 'helth' (did you mean 'health'?)"),
    ("entrypoint: [x]\n", "unknown key 'entrypoint'"),
    ("native:\n  - command: [demo]\n    gpu-args: [--x]\n",
     "native[0]: unknown key 'gpu-args' (did you mean 'gpu_args'?)"),
    ("warmup: {method: POST, path: /x, body: {}, timeout: 3}\n", "warmup: unknown key 'timeout'"),
    ("pull: {method: PUT, path: /x}\n", "pull: method: expected one of POST, GET"),
    ("gpu_args: [--ngl, 999]\n", "quote numbers"),
    ("gpu_args: [--x, '{gpus}']\n", "unknown placeholder {gpus}"),
    ("env: {A: '{port'}\n", "unbalanced brace"),
    ("metrics: metrics\n", "starts with '/'"),
    ("model_mount: models\n", "absolute path"),
    ("formats: [gguf, exl2]\n", "formats: unknown ['exl2']"),
    ("gpu: cdi\n", "gpu: expected one of docker-gpus, none"),
    ("footprint: lots\n", "footprint"),
    ("native: {command: [x]}\n", "native: expected a list"),
    ("native:\n  - command: []\n", "cannot be empty"),
])
def test_engine_files_are_strict(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(EngineError) as caught:
        load_engine_file(_write(tmp_path, GOOD_YAML + extra))
    assert message in str(caught.value)
    assert "demo.yaml" in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ("image: x\nport: 1\ncommand: []\n", "'name' is required"),
    ("name: Demo\n", "lowercase"),
    ("name: demo\nimage: x\n", "needs 'port' and 'command'"),
    ("name: demo\nimage_cpu: x\n", "image_cpu needs image"),
    ("name: demo\ngpu_args: [--x]\nenv: {A: b}\n", "gpu_args, env need 'command'"),
    ("name: demo\nport: 0\n", "port: expected a number"),
    ("- name: demo\n", "expected a mapping"),
    ("name: demo\nname: again\n", "not valid YAML"),
    ("name: [demo\n", "not valid YAML"),
])
def test_broken_engine_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(EngineError) as caught:
        load_engine_file(_write(tmp_path, text))
    assert message in str(caught.value)
