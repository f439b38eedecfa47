"""Templates in manifests are untrusted: sandboxed, strict, and deferred references become edges."""

from __future__ import annotations

import pytest

from aimactl.manifest.render import TemplateProblem, TemplateRef, render_deferred, render_string

CTX = {"vars": {"tag": "1.0", "n": "2"}}

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__ }}",
    "{{ vars.__class__ }}",
    "{{ vars['__class__'] }}",
    "{{ (vars|attr('__class__')).__name__ }}",
    "{{ vars|attr('__class__') }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ self._TemplateReference__context }}",
    "{% import 'os' as os %}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{{ lipsum.__globals__ }}",
    "{{ range(10**9)|list }}",
    "{{ config }}",
    "{{ request }}",
    "{{ 'a' * 10**9 }}",
    "{{ ['a'] * 1000000 }}",
    "{{ 2 ** 100000 }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_are_rejected_with_a_clear_error(template: str) -> None:
    with pytest.raises(TemplateProblem) as err:
        render_string(template, CTX)
    assert err.value.code in ("template-unsafe", "template-undefined")
    assert err.value.message


def test_vars_render_now() -> None:
    assert render_string("img:{{ vars.tag }}", CTX) == ("img:1.0", [])
    assert render_string("{{ vars.tag | upper }}-{{ vars.n | int + 1 }}", CTX) == ("1.0-3", [])


def test_env_only_when_allowed() -> None:
    with pytest.raises(TemplateProblem, match="--allow-env"):
        render_string("{{ env.HOME }}", CTX)
    assert render_string("{{ env.HOME }}", {**CTX, "env": {"HOME": "/root"}}) == ("/root", [])


def test_deferred_references_are_kept_and_returned_as_edges() -> None:
    text = "{{ services.chat.url }}/v1?m={{ models.qwen.path }}"
    kept, refs = render_string(text, CTX)
    assert kept == text
    assert refs == [TemplateRef("services", "chat", "url"), TemplateRef("models", "qwen", "path")]
    assert render_deferred(kept, {"services": {"chat": {"url": "http://h:9000"}},
                                  "models": {"qwen": {"path": "/m/q.gguf"}}}) == "http://h:9000/v1?m=/m/q.gguf"


@pytest.mark.parametrize("template", ["{{ services.chat }}", "{{ services.chat.image }}", "{{ models.q.url }}"])
def test_deferred_references_must_name_a_known_attribute(template: str) -> None:
    with pytest.raises(TemplateProblem, match="is not known"):
        render_string(template, CTX)


def test_undefined_variable_names_the_flag_to_use() -> None:
    with pytest.raises(TemplateProblem, match=r"--var missing=VALUE"):
        render_string("{{ vars.missing }}", CTX)


def test_syntax_error() -> None:
    with pytest.raises(TemplateProblem) as err:
        render_string("{{ vars.tag ", CTX)
    assert err.value.code == "template-syntax"
