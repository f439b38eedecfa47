"""The manifest kinds: Host, Model, Service, App and Pipeline, as pydantic v2 models.

Field docstrings become the JSON Schema descriptions that `aimactl explain` and editors show (read by
manifest/schema.py when a schema is built, not at import), so they are written for the person writing the
manifest. YAML keys are camelCase; Python attributes are snake_case.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from aimactl.manifest import units

API_VERSION = "aima.dev/v1"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MODEL_SCHEMES = ("hf", "ollama", "modelscope", "https", "http", "file")
ENGINES = ("vllm", "llamacpp", "ollama", "sglang", "tgi", "custom")


def check_name(value: str) -> str:
    """Reject names that are not DNS-1123 labels; names become container names and paths on hosts."""
    if not isinstance(value, str) or len(value) > 63 or not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    return value


def _validated(parser: Any) -> Any:
    """Build an AfterValidator that checks a value with a pure parser and keeps the value as written."""

    def check(value: Any) -> Any:
        if value is not None:
            parser(value)
        return value

    return AfterValidator(check)


_DOMAIN = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
IMAGE_RE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[\w][\w.-]{{0,127}})?"
                      r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def check_image(value: str) -> str:
    """Reject what is not a Docker image reference (`[registry/]path[:tag][@digest]`) before any engine sees
    it; a template left for plan time is checked by the engine then."""
    if "{{" in value or "{%" in value or IMAGE_RE.fullmatch(value):
        return value
    raise ValueError(f"{value!r} is not an image reference: use [registry[:port]/]name[:tag][@sha256:digest]")


Name = Annotated[str, AfterValidator(check_name)]
ImageRef = Annotated[str, AfterValidator(check_image)]
ByteSize = Annotated[str | int, _validated(units.parse_bytes)]
Duration = Annotated[str | int | float, _validated(units.parse_duration)]
PortSpec = Annotated[str | int, _validated(units.parse_port)]
VolumeSpec = Annotated[str, _validated(units.parse_volume)]
Command = str | list[str]


class Strict(BaseModel):
    """Base of every manifest object: unknown fields are errors, YAML keys are camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
    )


class SecretSource(Strict):
    """Where a secret value comes from. Exactly one of `env` or `file`."""

    env: str | None = None
    """Name of an environment variable on the controller that holds the secret."""
    file: str | None = None
    """Path of a file holding the secret (relative paths are relative to the manifest)."""

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("secretFrom needs exactly one of 'env' or 'file'")
        return self


class SecretValue(Strict):
    """A value read from a secret at apply time; it is never printed, stored or put in labels in clear."""

    secret_from: SecretSource
    """The secret's source."""


def _env_text(value: Any) -> Any:
    """Numbers and booleans in `env` become strings, as Compose users expect (`PORT: 8080`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


def _not_bool(value: Any) -> Any:
    """YAML `true` is not a number: refuse it where an integer is expected."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


EnvValue = Annotated[str | SecretValue, BeforeValidator(_env_text)]
Count = Annotated[int, BeforeValidator(_not_bool)]


class Metadata(Strict):
    """Identity of a resource."""

    name: Name
    """Resource name: a DNS-1123 label (lowercase letters, digits, '-', at most 63 characters)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form key/value labels; Hosts' labels are matched by `hostSelector`."""


class HostSpec(Strict):
    """A machine to converge: the local one or one reached over SSH."""

    address: str = "local"
    """`local`, or `ssh://user@host[:port]`."""
    identity_file: str | None = None
    """Private key for SSH; the SSH agent and default keys are tried when absent."""
    known_hosts: str | None = None
    """known_hosts file used for strict host key checking (default `~/.ssh/known_hosts`)."""
    docker: str | None = None
    """Docker endpoint on that host, e.g. `unix:///var/run/docker.sock` (default: the host's local socket)."""
    data_dir: str = "~/.local/share/aimactl"
    """Directory on the host for the model cache and process state."""
    python: str = "python3"
    """Python interpreter on the host that runs aimactl's helper (3.8 or newer)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels matched by Services' and Apps' `hostSelector` (merged with `metadata.labels`)."""
    port_range: Annotated[str, _validated(units.parse_port_range)] = "9000-9100"
    """Host ports used when a Service has no `port`: START-END."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value == "local":
            return value
        if not re.fullmatch(r"ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.\-\[\]:]+?(:\d{1,5})?", value):
            raise ValueError(f"{value!r} is not a host address: use 'local' or 'ssh://user@host[:port]'")
        return value


class ModelSpec(Strict):
    """A model artifact and where it comes from. It is fetched onto every host that runs a Service using it."""

    source: str
    """`hf://org/repo[/file][@revision]`, `ollama://name:tag`, `modelscope://org/repo[/file]`, `https://...`,
    `file:///abs/path` or `file://./relative/to/manifest`."""
    sha256: str | None = None
    """Expected SHA-256 of the file; a mismatch quarantines the download."""
    format: Literal["gguf", "safetensors", "pytorch", "onnx", "ollama", "other"] | None = None
    """File format; detected from the source when absent."""
    size: ByteSize | None = None
    """Size hint (e.g. `4.7GiB`) used for disk and memory checks before the file is known."""
    allow_insecure: bool = False
    """Allow a plain `http://` source."""
    token: SecretValue | None = None
    """Access token for gated repositories (Hugging Face, ModelScope), from a secret."""

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        rest = value.split("://", 1)[1] if "://" in value else ""
        if scheme == "file" and not rest.startswith(("/", "./", "../")):
            raise ValueError(f"{value!r}: use file:///absolute/path or file://./relative/to/the/manifest")
        if scheme not in MODEL_SCHEMES or not rest:
            raise ValueError(
                f"{value!r} is not a model source: use one of " + ", ".join(f"{s}://" for s in MODEL_SCHEMES)
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _insecure(self) -> ModelSpec:
        if self.source.startswith("http://") and not self.allow_insecure:
            raise ValueError("http:// sources are refused; use https:// or set allowInsecure: true")
        return self


class Resources(Strict):
    """What a Service or App needs from its host."""

    gpus: Annotated[int, BeforeValidator(_not_bool), Field(ge=0)] | list[int | str] | None = None
    """GPU count, or explicit GPU indexes / UUIDs. Absent: no GPU."""
    gpu_memory: ByteSize | None = None
    """GPU memory the workload needs (e.g. `20GiB`); estimated from the model when absent."""
    memory: ByteSize | None = None
    """Memory limit for the container or process."""
    cpus: float | None = Field(default=None, gt=0)
    """CPU limit in cores."""


class Health(Strict):
    """How readiness is decided."""

    path: str | None = None
    """HTTP path that answers 2xx when ready; the engine's default when absent. Apps without one are ready
    once they keep running for half a second."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Container port to probe (when several are published); the first published port when absent."""
    startup_timeout: Duration = "20m"
    """How long to wait for readiness: model loading takes minutes."""
    interval: Duration = "5s"
    """Time between health probes."""


class ServiceHealth(Health):
    """How a Service's readiness is decided: the health path, then a warmup request."""

    warmup: bool = True
    """One tiny real inference request must succeed before the Service is ready (engines that have one)."""


class Placement(Strict):
    """Fields shared by Services and Apps: where they run and how they are kept."""

    host: Name | None = None
    """Host name to run on (`local` when there are no Host documents)."""
    host_selector: dict[str, str] | None = None
    """Labels a Host must carry; one matching host is chosen by the placement policy."""
    placement_policy: Literal["binpack", "spread"] = "binpack"
    """How `hostSelector` chooses among matching hosts (and GPUs within one): `binpack` fills the fullest that
    still fits, `spread` the emptiest. A workload that runs on a matching host stays there."""
    replicas: Count = Field(default=1, ge=0)
    """How many copies to run."""
    env: dict[str, EnvValue] = Field(default_factory=dict)
    """Environment variables; a value may be `{secretFrom: {env: NAME}}` or `{secretFrom: {file: PATH}}`."""
    volumes: list[VolumeSpec] = Field(default_factory=list)
    """Volumes as `SOURCE:/path[:ro]`; SOURCE is a host path or a named volume."""
    resources: Resources = Field(default_factory=Resources)
    """Resource requirements and limits."""
    self_heal: bool = True
    """Let `aimactl reconcile` revert drift and restart what died; false only reports drift."""

    @model_validator(mode="after")
    def _one_placement(self) -> Placement:
        if self.host and self.host_selector:
            raise ValueError("set either 'host' or 'hostSelector', not both")
        return self


class ServiceSpec(Placement):
    """An inference engine serving a Model, as a Docker container or a native process."""

    engine: Literal["vllm", "llamacpp", "ollama", "sglang", "tgi", "custom"]
    """Inference engine; `custom` needs `image` (docker) or `command` (process)."""
    model: Name | None = None
    """Name of the Model to serve (required except for `custom`)."""
    runtime: Literal["docker", "process"] = "docker"
    """Run as a Docker container or as a native process supervised by aimactl's helper."""
    port: Count | None = Field(default=None, ge=1, le=65535)
    """Host port the Service is published on; allocated from the Host's `portRange` when absent."""
    container_port: Count | None = Field(default=None, ge=1, le=65535)
    """Port the engine listens on inside the container; the engine's default when absent."""
    image: ImageRef | None = None
    """Container image override."""
    command: Command | None = None
    """Command override (a list of arguments, or one string split like a shell would, without a shell)."""
    args: list[str] = Field(default_factory=list)
    """Extra arguments appended to the engine's command line."""
    health: ServiceHealth = Field(default_factory=ServiceHealth)
    """Readiness checks."""
    update: Literal["recreate", "surge"] = "recreate"
    """`recreate` stops the old copy first; `surge` starts the new one beside it when both fit."""
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    """Docker restart policy."""

    @model_validator(mode="after")
    def _engine_needs(self) -> ServiceSpec:
        if self.engine != "custom" and not self.model:
            raise ValueError(f"engine {self.engine!r} needs 'model'")
        if self.engine == "custom" and self.runtime == "docker" and not self.image:
            raise ValueError("engine 'custom' on the docker runtime needs 'image'")
        if self.engine == "custom" and self.runtime == "process" and not self.command:
            raise ValueError("engine 'custom' on the process runtime needs 'command'")
        return self


class AppSpec(Placement):
    """A Docker application (a web UI, a vector DB, a gateway ...), usually talking to Services."""

    image: ImageRef | None = None
    """Container image."""
    template: Literal["open-webui"] | None = None
    """Built-in App template that supplies image, ports and health (fields given here override it)."""
    command: Command | None = None
    """Command override."""
    ports: list[PortSpec] = Field(default_factory=list)
    """Published ports: `8080`, `"8080:80"` or `127.0.0.1:8080:80/tcp`."""
    depends_on: list[Name] = Field(default_factory=list)
    """Services or Apps that must be ready before this App starts."""
    health: Health = Field(default_factory=Health)
    """Readiness checks; without `path` the App is ready once it keeps running for half a second."""
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    """Docker restart policy."""

    @model_validator(mode="after")
    def _image_or_template(self) -> AppSpec:
        if not self.image and not self.template:
            raise ValueError("an App needs 'image' or 'template'")
        return self


class PipelineInput(Strict):
    """One input of a Pipeline."""

    type: Literal["string", "number", "boolean", "object", "array"] = "string"
    """JSON type of the input."""
    default: Any = None
    """Value used when the run does not give one; an input without default is required."""
    description: str | None = None
    """What the input means."""


class PipelineStep(Strict):
    """One inference call in a Pipeline."""

    id: Name
    """Step id, unique in the Pipeline; later steps read its result as `steps.<id>`."""
    service: Name
    """Service (or App, for `http`) the step calls."""
    op: Literal["chat", "complete", "embed", "http"]
    """Kind of call: OpenAI-style chat / completion / embedding, or a plain HTTP request."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """Call arguments; string values are templates over `inputs` and `steps`."""
    needs: list[Name] = Field(default_factory=list)
    """Steps that must finish first (references to `steps.<id>` add these edges too)."""
    retries: Count = Field(default=0, ge=0, le=20)
    """How many times a failed call is retried."""
    timeout: Duration = "120s"
    """Time limit of one call."""


class PipelineSpec(Strict):
    """A DAG of inference calls against Services."""

    inputs: dict[str, PipelineInput] = Field(default_factory=dict)
    """Named inputs."""
    steps: list[PipelineStep] = Field(min_length=1)
    """The steps; they run as soon as their `needs` are done."""
    outputs: dict[str, str] = Field(default_factory=dict)
    """Named outputs: templates over `inputs` and `steps`."""


def _document(kind: str, spec: type[Strict], doc: str) -> type[Strict]:
    """Build the top-level document model of one kind: apiVersion, kind, metadata, spec."""
    fields: dict[str, Any] = {
        "api_version": (Literal["aima.dev/v1"], Field(description="Always `aima.dev/v1`.")),
        "kind": (Literal[kind], Field(description=f"Always `{kind}`.")),
        "metadata": (Metadata, Field(description="Name and labels.")),
        "spec": (spec, Field(description=spec.__doc__)),
    }
    from pydantic import create_model

    model: type[Strict] = create_model(kind, __base__=Strict, __doc__=doc, **fields)
    return model


Host = _document("Host", HostSpec, "A machine aimactl converges.")
Model = _document("Model", ModelSpec, "A model artifact and its source.")
Service = _document("Service", ServiceSpec, "An inference engine serving a Model.")
App = _document("App", AppSpec, "A Docker application.")
Pipeline = _document("Pipeline", PipelineSpec, "A DAG of inference calls.")

KINDS: dict[str, type[Strict]] = {"Host": Host, "Model": Model, "Service": Service, "App": App,
                                  "Pipeline": Pipeline}
