"""The `aimactl` command line: typer commands that parse flags and hand over to the packages doing the work.

Command modules are imported inside each command so that `aimactl --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    name="aimactl",
    help="Declarative GitOps for AI inference on edge GPU machines: plan, apply and watch models, "
         "inference services and apps from YAML manifests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's help renderer costs ~0.14 s of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)

FILES = typer.Option(..., "-f", "--filename", help="Manifest file or directory (repeatable); '-' reads stdin.")
VARS = typer.Option([], "--var", help="Template variable NAME=VALUE (repeatable).")
VAR_FILES = typer.Option([], "--var-file", help="YAML/JSON file of template variables (repeatable).")
ALLOW_ENV = typer.Option(False, "--allow-env", help="Let templates read environment variables as {{ env.NAME }}.")


class Output(str, Enum):
    """Output formats of commands that print a report."""

    text = "text"
    json = "json"


@app.command()
def validate(
    files: list[str] = FILES,
    var: list[str] = VARS,
    var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV,
    output: Output = typer.Option(Output.text, "-o", "--output", help="text or json."),
) -> None:
    """Check manifests (syntax, fields, templates, references, cycles) without touching any host."""
    from aimactl.cli.manifests import validate_command

    validate_command(files, var, var_file, allow_env, output.value)


@app.command()
def schema(
    out: Path = typer.Option(None, "--out", help="Directory to write into (default: ./schemas)."),
    check: bool = typer.Option(False, "--check", help="Only compare with the files there; exit 1 if stale."),
) -> None:
    """Write the JSON Schema of each kind and of any kind, for editors and agents."""
    from aimactl.cli.manifests import schema_command

    schema_command(out, check)


@app.command()
def explain(
    field: str = typer.Argument(..., help="KIND[.FIELD...], e.g. service.spec.resources"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Show every nested field."),
) -> None:
    """Describe a manifest field and its sub-fields, like kubectl explain."""
    from aimactl.cli.manifests import explain_command

    explain_command(field, recursive)


@app.command()
def version() -> None:
    """Print the aimactl version."""
    from aimactl import __version__

    typer.echo(f"aimactl {__version__}")


def main() -> None:
    """Entry point: run the CLI, turning unexpected failures into one clear line instead of a traceback."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last guard; details with AIMACTL_DEBUG=1
        if os.environ.get("AIMACTL_DEBUG"):
            raise
        sys.stderr.write(f"Error: {type(exc).__name__}: {exc}\n(set AIMACTL_DEBUG=1 to see the traceback)\n")
        sys.exit(1)
