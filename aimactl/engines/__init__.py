"""Engines: the data catalog of inference engines (one YAML file each) and the renderer that turns a Service,
its Model and host facts into a concrete container or process."""

from aimactl.engines.catalog import (
    Engine,
    EngineError,
    HostFacts,
    Launch,
    ModelInfo,
    RenderedEngine,
    Request,
    engine_names,
    load_engine,
    load_engine_file,
    parse_engine,
)
from aimactl.engines.render import model_info, render

__all__ = ["Engine", "EngineError", "HostFacts", "Launch", "ModelInfo", "RenderedEngine", "Request", "engine_names",
           "load_engine", "load_engine_file", "model_info", "parse_engine", "render"]
