"""Commands about manifests themselves: validate, schema, explain."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from aimactl.cli.output import console, error, print_json


def read_manifests(files: list[str], var: list[str], var_file: list[str], allow_env: bool):  # noqa: ANN201
    """Load and validate `-f` inputs (stdin for `-`) with the template context the flags describe."""
    from aimactl.manifest import load_manifests

    stdin_text = sys.stdin.read() if "-" in files else None
    environ = dict(os.environ) if allow_env else None
    return load_manifests(files, var, var_file, environ, stdin_text)


def validate_command(files: list[str], var: list[str], var_file: list[str], allow_env: bool, output: str) -> None:
    """Print the summary or every error; exit 1 when anything is invalid."""
    result = read_manifests(files, var, var_file, allow_env)
    if output == "json":
        print_json({
            "valid": result.valid,
            "resources": [{"kind": r.kind, "name": r.name, "file": r.file, "line": r.line} for r in result.resources],
            "errors": [e.to_dict() for e in result.errors],
        })
    elif result.valid:
        console().print(f"[green]✓[/green] {result.summary()}")
    else:
        err = console(stderr=True)
        for e in result.errors:
            err.print(f"[bold]{e.location()}[/bold]: [red]{e.code}[/red]: " + (f"{e.path}: " if e.path else "")
                      + e.message, markup=True, highlight=False)
        count = len(result.errors)
        err.print(f"{count} error{'s' if count != 1 else ''} found")
    raise typer.Exit(0 if result.valid else 1)


def schema_command(out: Path | None, check: bool) -> None:
    """Write the JSON Schemas (or compare them with the files on disk with --check)."""
    from aimactl.manifest.schema import all_schemas, dumps

    out = out or Path("schemas")
    stale = []
    for name, schema in all_schemas().items():
        path, text = out / name, dumps(schema)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        console().print(f"wrote {path}")
    if stale:
        error("schemas are out of date: " + ", ".join(stale) + "; run `aimactl schema`")
        raise typer.Exit(1)


def explain_command(field: str, recursive: bool) -> None:
    """Describe a manifest field, `kubectl explain` style."""
    from aimactl.manifest.explain import ExplainError, explain

    try:
        text = explain(field, recursive)
    except ExplainError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    sys.stdout.write(text)
