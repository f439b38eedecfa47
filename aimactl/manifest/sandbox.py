"""The Jinja2 side of manifest templating: the sandbox, the AST vetting and rendering.

Imported only when a manifest holds a template (see render.py), so that manifests without one never load Jinja2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aimactl.manifest.render import DEFERRED_FIELDS, IMMEDIATE_ROOTS, TemplateProblem, TemplateRef

_FORBIDDEN_NODES = (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends, nodes.Macro,
                    nodes.CallBlock)


MAX_REPEAT = 100_000
MAX_EXPONENT = 64


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox also bounds `*` and `**`, so `{{ 'a' * 10**9 }}` cannot exhaust the controller's memory."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_REPEAT:
                    raise SecurityError(f"repetition builds more than {MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one sandbox: StrictUndefined, no loader, no globals (no `range`, `cycler`, `lipsum` ...)."""
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()
    return env


def _attr_chain(node: nodes.Node) -> list[str] | None:
    """Flatten `a.b.c` or `a['b'].c` into names; None when the chain is not plain names and constants."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            parts.append(str(node.arg.value))
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return parts[::-1]
        else:
            return None


def _check_safe(ast: nodes.Template) -> None:
    """Reject templates that reach for attributes starting with '_' or use imports, includes or macros."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, *_FORBIDDEN_NODES)):
        if isinstance(node, _FORBIDDEN_NODES):
            raise TemplateProblem("template-unsafe", f"'{type(node).__name__.lower()}' is not allowed in manifests")
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(getattr(node, "arg", None), "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(
                "template-unsafe",
                f"template reaches for Python internals ({name!r}); only vars, env, services, models, "
                "inputs and steps can be used",
            )


def _names(ast: nodes.Template) -> tuple[set[str], set[str]]:
    """Names read and names assigned (by `set` and `for`) in a template."""
    loaded = {n.name for n in ast.find_all(nodes.Name) if n.ctx == "load"}
    stored = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return loaded, stored


def _deferred_refs(ast: nodes.Template) -> Iterator[TemplateRef]:
    """Yield the services/models/inputs/steps references a template makes, checking their shape."""
    # Visit each access chain once, from its outermost node: `services.chat.url`, not `services.chat`.
    inner = {id(n.node) for n in ast.find_all((nodes.Getattr, nodes.Getitem))}  # type: ignore[attr-defined]
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        chain = _attr_chain(node)
        if not chain or chain[0] not in DEFERRED_FIELDS or id(node) in inner:
            continue
        root, allowed = chain[0], DEFERRED_FIELDS[chain[0]]
        if len(chain) < 2:
            raise TemplateProblem("template-undefined", f"'{root}' must be followed by a name, e.g. {root}.NAME")
        attr = chain[2] if len(chain) > 2 else None
        if allowed is not None and attr not in allowed:
            wanted = " or ".join(f"{root}.{chain[1]}.{a}" for a in allowed)
            raise TemplateProblem("template-undefined", f"'{'.'.join(chain)}' is not known: use {wanted}")
        yield TemplateRef(root, chain[1], attr)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    """The compiled template of a source text: many manifests repeat the same few templates."""
    return environment().from_string(source)


@lru_cache(maxsize=4096)
def analyse(source: str) -> tuple[nodes.Template, tuple[TemplateRef, ...], frozenset[str]]:
    """Parse and vet a template: its AST, its deferred references, and the names it reads."""
    try:
        ast = environment().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem("template-syntax", f"template syntax error: {exc.message}") from None
    _check_safe(ast)
    loaded, stored = _names(ast)
    unknown = sorted(loaded - stored - set(IMMEDIATE_ROOTS) - set(DEFERRED_FIELDS))
    if unknown:
        raise TemplateProblem(
            "template-undefined",
            f"'{unknown[0]}' is undefined: templates may use vars, env, services, models (and inputs, steps "
            "in Pipelines)",
        )
    return ast, tuple(dict.fromkeys(_deferred_refs(ast))), frozenset(loaded)


def _check_immediate(ast: nodes.Template, context: Mapping[str, Any]) -> None:
    """Name the missing `vars.x` / `env.X` precisely, with how to provide it."""
    for node in ast.find_all(nodes.Getattr):
        chain = _attr_chain(node)
        if not chain or len(chain) < 2 or chain[0] not in IMMEDIATE_ROOTS:
            continue
        root, key = chain[0], chain[1]
        if root == "env" and "env" not in context:
            raise TemplateProblem("template-undefined",
                                  f"'env.{key}' needs --allow-env: environment variables are off by default")
        if key not in context.get(root, {}):
            hint = f"pass --var {key}=VALUE or --var-file" if root == "vars" else f"set {key} in the environment"
            raise TemplateProblem("template-undefined", f"'{root}.{key}' is undefined: {hint}")


def render_string(source: str, context: Mapping[str, Any]) -> tuple[str, list[TemplateRef]]:
    """Render one template string now, or keep it when it has deferred references (returned as edges).

    `context` holds `vars` and, only when the operator allowed it, `env`.
    """
    ast, refs, loaded = analyse(source)
    if "env" in loaded and "env" not in context:
        _check_immediate(ast, context)
    if refs:
        # Rendered later, when the plan knows the deferred values; the variables must exist now.
        _check_immediate(ast, context)
        return source, list(refs)
    try:
        return _compiled(source).render(**context), []
    except SecurityError as exc:
        raise TemplateProblem("template-unsafe", f"template is not allowed: {exc}") from None
    except UndefinedError as exc:
        _check_immediate(ast, context)  # names the missing `vars.x` and the flag to pass, when it is that
        raise TemplateProblem("template-undefined", f"template uses an undefined value: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside an untrusted template is the template's fault
        raise TemplateProblem("template-error", f"template failed: {type(exc).__name__}: {exc}") from None


def render_deferred(source: str, context: Mapping[str, Any]) -> str:
    """Render a kept template once its deferred values (services, models, inputs, steps) are known."""
    analyse(source)
    try:
        return _compiled(source).render(**context)
    except SecurityError as exc:
        raise TemplateProblem("template-unsafe", f"template is not allowed: {exc}") from None
    except UndefinedError as exc:
        raise TemplateProblem("template-undefined", f"template uses an undefined value: {exc.message}") from None
