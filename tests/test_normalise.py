"""Spec normalisation, hashing and field diffs (aimactl.core.spec), and the plan file round trip (planfile).

The spec hash is the identity that makes "apply, then plan" empty: equivalent specs must hash alike, real
changes must not, and the diff must name the field that changed. A saved plan must come back the same and
must never hold a secret value.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aimactl.converge.secrets import digests, secret_sources_in
from aimactl.core.containers import ContainerSpec, GpuRequest, Mount, SecretEnv
from aimactl.core.desired import build_desired
from aimactl.core.observed import Observed, ObservedHost, PublishedPort
from aimactl.core.plan import Plan, PlanOptions, plan
from aimactl.core.planfile import FORMAT_VERSION, PlanFileError, from_dict, to_dict
from aimactl.core.spec import (
    IN_PLACE_FIELDS,
    diff_fields,
    flatten,
    forces_replacement,
    normalise,
    normalise_image,
    spec_hash,
)
from aimactl.manifest import load_manifests

DIGESTS = {"env:API_KEY": "d-env:API_KEY"}
IMAGE_ID = "sha256:busybox-1"


def base_spec(**changes: object) -> ContainerSpec:
    """A container spec with a bit of everything; keyword arguments replace fields."""
    spec = ContainerSpec(
        name="aima-default-api-0",
        image="busybox",
        command=("serve", "--port", "8000"),
        env={"MODE": "fast", "LOG": "info", "API_KEY": SecretEnv("env:API_KEY")},
        ports=(PublishedPort("", 9000, 8000), PublishedPort("127.0.0.1", 9001, 9090, "udp")),
        mounts=(Mount("/srv/models", "/models", True), Mount("cache", "/cache")),
        restart="unless-stopped",
        memory=512 * 2**20,
        nano_cpus=2_000_000_000,
        gpus=GpuRequest(count=1),
        labels={"tier": "llm"},
    )
    return dataclasses.replace(spec, **changes)


def hash_of(spec: ContainerSpec, image_id: str | None = IMAGE_ID, secrets: dict[str, str] | None = None) -> str:
    """The spec hash apply would write for this spec."""
    return spec_hash(normalise(spec, image_id, DIGESTS if secrets is None else secrets))


# --- normalise and spec_hash ----------------------------------------------------------------------------------


def test_normalised_spec_is_plain_json_data() -> None:
    """The normalised spec is what the dev.aima.spec label stores: JSON, one spelling per value."""
    spec = normalise(base_spec(), IMAGE_ID, DIGESTS)
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {
        "image": "busybox:latest",
        "imageId": IMAGE_ID,
        "command": ["serve", "--port", "8000"],
        "env": {"API_KEY": "secret:d-env:API_KEY", "LOG": "info", "MODE": "fast"},
        "ports": ["0.0.0.0:9000:8000/tcp", "127.0.0.1:9001:9090/udp"],
        "volumes": ["/srv/models:/models:ro", "cache:/cache:rw"],
        "restart": "unless-stopped",
        "resources": {"memory": 536870912, "cpus": 2.0, "gpus": {"count": 1, "deviceIds": []}},
        "labels": {"tier": "llm"},
    }


EQUIVALENT = {
    "env in another order": {"env": {"API_KEY": SecretEnv("env:API_KEY"), "MODE": "fast", "LOG": "info"}},
    "ports in another order": {"ports": (PublishedPort("127.0.0.1", 9001, 9090, "udp"), PublishedPort("", 9000, 8000))},
    "0.0.0.0 spelled out": {"ports": (PublishedPort("0.0.0.0", 9000, 8000), PublishedPort("127.0.0.1", 9001, 9090,
                                                                                             "udp"))},
    "volumes in another order": {"mounts": (Mount("cache", "/cache", False), Mount("/srv/models", "/models", True))},
    "image with :latest": {"image": "busybox:latest"},
    "labels in another order": {"labels": {"tier": "llm"}},
    "a different container name": {"name": "aima-default-api-1"},
}


@pytest.mark.parametrize("changes", EQUIVALENT.values(), ids=EQUIVALENT.keys())
def test_equivalent_specs_hash_alike(changes: dict[str, object]) -> None:
    """Spellings of the same container give the same hash (the name is identity, not spec)."""
    assert hash_of(base_spec(**changes)) == hash_of(base_spec())


def test_no_gpus_spelled_three_ways_hash_alike() -> None:
    """No GPU request, a count of 0 and an empty id list all mean "no GPU"."""
    hashes = {hash_of(base_spec(gpus=g)) for g in (None, GpuRequest(count=0), GpuRequest(device_ids=()))}
    assert len(hashes) == 1


REAL_CHANGES = {
    "image tag": {"image": "busybox:1.36"},
    "command": {"command": ("serve", "--port", "8001")},
    "no command": {"command": None},
    "env value": {"env": {"MODE": "accurate", "LOG": "info", "API_KEY": SecretEnv("env:API_KEY")}},
    "env key added": {"env": {"MODE": "fast", "LOG": "info", "API_KEY": SecretEnv("env:API_KEY"), "X": "1"}},
    "secret source": {"env": {"MODE": "fast", "LOG": "info", "API_KEY": SecretEnv("env:OTHER_KEY")}},
    "host port": {"ports": (PublishedPort("", 9002, 8000), PublishedPort("127.0.0.1", 9001, 9090, "udp"))},
    "host address": {"ports": (PublishedPort("127.0.0.1", 9000, 8000), PublishedPort("127.0.0.1", 9001, 9090,
                                                                                      "udp"))},
    "protocol": {"ports": (PublishedPort("", 9000, 8000, "udp"), PublishedPort("127.0.0.1", 9001, 9090, "udp"))},
    "volume read-only": {"mounts": (Mount("/srv/models", "/models", False), Mount("cache", "/cache"))},
    "restart": {"restart": "always"},
    "memory": {"memory": 2**30},
    "cpus": {"nano_cpus": 1_500_000_000},
    "gpu count": {"gpus": GpuRequest(count=2)},
    "gpu ids": {"gpus": GpuRequest(device_ids=("0",))},
    "labels": {"labels": {"tier": "embed"}},
}


@pytest.mark.parametrize("changes", REAL_CHANGES.values(), ids=REAL_CHANGES.keys())
def test_real_changes_change_the_hash(changes: dict[str, object]) -> None:
    """Anything Docker would run differently changes the hash."""
    assert hash_of(base_spec(**changes)) != hash_of(base_spec())


def test_image_id_and_secret_digest_are_part_of_the_hash() -> None:
    """A re-pulled tag, a missing image and a rotated secret change the hash; the secret value never shows."""
    assert hash_of(base_spec(), image_id="sha256:busybox-2") != hash_of(base_spec())
    assert hash_of(base_spec(), image_id=None) != hash_of(base_spec())
    rotated = {"env:API_KEY": "d-rotated"}
    assert hash_of(base_spec(), secrets=rotated) != hash_of(base_spec())
    assert normalise(base_spec(), IMAGE_ID, {})["env"]["API_KEY"] == "secret:unresolved"


def test_spec_hash_ignores_key_order_and_is_sha256_hex() -> None:
    """The hash is over canonical JSON: dict order never matters."""
    one = spec_hash({"a": 1, "b": {"c": 2, "d": 3}})
    assert one == spec_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert len(one) == 64 and int(one, 16) >= 0


@pytest.mark.parametrize(("image", "normalised"), [
    ("busybox", "busybox:latest"),
    ("busybox:1.36", "busybox:1.36"),
    ("library/busybox", "library/busybox:latest"),
    ("ghcr.io/ggml-org/llama.cpp:server-cuda", "ghcr.io/ggml-org/llama.cpp:server-cuda"),
    ("registry.local:5000/team/api", "registry.local:5000/team/api:latest"),
    ("registry.local:5000/team/api:2.1", "registry.local:5000/team/api:2.1"),
    ("busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64),
])
def test_normalise_image_adds_latest_only_when_there_is_no_tag(image: str, normalised: str) -> None:
    """A registry port is not a tag; a digest is never given a tag."""
    assert normalise_image(image) == normalised


# --- diff_fields and in-place fields ----------------------------------------------------------------------------


def test_diff_names_env_keys_and_nested_fields() -> None:
    """env changes are per key, resources per sub-field, lists are compared whole; paths come sorted."""
    before = normalise(base_spec(), IMAGE_ID, DIGESTS)
    after = normalise(base_spec(env={"MODE": "accurate", "LOG": "info", "API_KEY": SecretEnv("env:API_KEY")},
                                memory=2**30, ports=(PublishedPort("", 9002, 8000),)), IMAGE_ID, DIGESTS)
    assert diff_fields(before, after) == [
        ("env.MODE", "fast", "accurate"),
        ("ports", ["0.0.0.0:9000:8000/tcp", "127.0.0.1:9001:9090/udp"], ["0.0.0.0:9002:8000/tcp"]),
        ("resources.memory", 536870912, 2**30),
    ]


def test_diff_of_equal_specs_is_empty() -> None:
    """No diff for the same spec, even after a trip through the JSON of the label."""
    spec = normalise(base_spec(), IMAGE_ID, DIGESTS)
    assert diff_fields(spec, json.loads(json.dumps(spec))) == []


def test_diff_against_no_spec_lists_every_field() -> None:
    """From no spec at all (a lost label), every field of the new spec appears, and nothing else."""
    spec = normalise(base_spec(), IMAGE_ID, DIGESTS)
    assert [path for path, _, _ in diff_fields(None, spec)] == sorted(flatten(spec))


def test_diff_names_removed_env_keys() -> None:
    """A removed env key is a change to None."""
    before = normalise(base_spec(), IMAGE_ID, DIGESTS)
    after = normalise(base_spec(env={"MODE": "fast", "API_KEY": SecretEnv("env:API_KEY")}), IMAGE_ID, DIGESTS)
    assert diff_fields(before, after) == [("env.LOG", "info", None)]


def test_first_env_variable_is_one_change() -> None:
    """Adding the first env variable (or label) changes exactly that key."""
    before = normalise(base_spec(env={}), IMAGE_ID, DIGESTS)
    after = normalise(base_spec(env={"A": "1"}), IMAGE_ID, DIGESTS)
    assert diff_fields(before, after) == [("env.A", None, "1")]


def test_in_place_fields_are_what_docker_update_can_change() -> None:
    """Restart policy, memory and CPU limits; they are real paths of a normalised spec."""
    assert IN_PLACE_FIELDS == {"restart", "resources.memory", "resources.cpus"}
    assert IN_PLACE_FIELDS <= set(flatten(normalise(base_spec(), IMAGE_ID, DIGESTS)))


@pytest.mark.parametrize("path", ["image", "imageId", "command", "env.MODE", "ports", "volumes",
                                  "resources.gpus.count", "resources.gpus.deviceIds", "labels.tier"])
def test_other_fields_force_replacement(path: str) -> None:
    """Everything else needs a new container."""
    assert forces_replacement(path)


@pytest.mark.parametrize("path", sorted(IN_PLACE_FIELDS))
def test_in_place_fields_do_not_force_replacement(path: str) -> None:
    """The in-place fields do not."""
    assert not forces_replacement(path)


# --- plan files -----------------------------------------------------------------------------------------------

MANIFEST = """\
apiVersion: aima.dev/v1
kind: Service
metadata:
  name: api
  labels: {tier: llm}
spec:
  engine: custom
  image: busybox
  containerPort: 8000
  replicas: 2
  env:
    MODE: fast
    API_KEY: {secretFrom: {env: API_KEY}}
  volumes: ["/srv/models:/models:ro"]
  resources: {memory: 1GiB, cpus: 2, gpus: [0, "GPU-5c9e"]}
  health: {path: /health, startupTimeout: 5m}
---
apiVersion: aima.dev/v1
kind: App
metadata: {name: web}
spec:
  image: busybox
  ports: ["127.0.0.1:8080:80"]
  env: {API_URL: "{{ services.api.url }}"}
"""
SECRET_VALUE = "sk-live-7f3a9c2e"


def saved_plan(tmp_path: Path) -> Plan:
    """A plan with creates, a delete, a secret and a dependency, made the way `aimactl plan` makes it."""
    path = tmp_path / "stack.yaml"
    path.write_text(MANIFEST)
    manifests = load_manifests([str(path)])
    assert manifests.valid, manifests.errors
    observed = Observed({"local": ObservedHost("local", image_ids={"busybox:latest": IMAGE_ID})})
    secret_digests = digests("default", secret_sources_in(manifests.resources), environ={"API_KEY": SECRET_VALUE})
    desired = build_desired("default", manifests.resources, observed, secret_digests,
                            {"local": {"busybox:latest": IMAGE_ID}})
    return plan(desired, observed, PlanOptions())


def test_plan_file_round_trip_keeps_what_apply_needs(tmp_path: Path) -> None:
    """from_dict(to_dict(plan)) has the same changes, desired containers, checks, edges and hosts."""
    original = saved_plan(tmp_path)
    assert [c.action for c in original.changes] == ["create"] * 3
    loaded = from_dict(json.loads(json.dumps(to_dict(original))))
    assert loaded.stack == original.stack
    assert loaded.changes == original.changes
    assert [c.fingerprint for c in loaded.changes] == [c.fingerprint for c in original.changes]
    assert [c.desired.container for c in loaded.changes] == [c.desired.container for c in original.changes]
    assert loaded.checks == original.checks
    assert loaded.edges == original.edges
    assert loaded.hosts == original.hosts
    assert loaded.summary() == original.summary() == {"add": 3, "change": 0, "destroy": 0}


def test_plan_file_holds_secret_references_and_digests_never_values(tmp_path: Path) -> None:
    """The secret is a reference in the container env and a digest in the spec and labels."""
    original = saved_plan(tmp_path)
    data = to_dict(original)
    text = json.dumps(data)
    assert SECRET_VALUE not in text
    api = next(c for c in data["changes"] if c["address"] == "service.api[0]@local")
    assert api["desired"]["container"]["env"]["API_KEY"] == {"secret": "env:API_KEY"}
    assert api["desired"]["spec"]["env"]["API_KEY"].startswith("secret:")
    assert api["desired"]["spec"]["env"]["API_KEY"] != "secret:unresolved"
    assert SECRET_VALUE not in json.dumps(api["desired"]["container"]["labels"])


def test_plan_file_refuses_other_versions_and_damage(tmp_path: Path) -> None:
    """Another format_version, or a change without its fields, is a PlanFileError."""
    data = to_dict(saved_plan(tmp_path))
    with pytest.raises(PlanFileError, match="format_version"):
        from_dict({**data, "format_version": FORMAT_VERSION + 1})
    broken = json.loads(json.dumps(data))
    del broken["changes"][0]["reason"]
    with pytest.raises(PlanFileError, match="damaged"):
        from_dict(broken)
