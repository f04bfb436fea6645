"""How the app's pages are rendered: standalone, or inside the site's own base template.

Every page template extends ``mfa/base.html`` and fills two blocks, ``mfa_title`` (plain text)
and ``mfa_content``. ``mfa/base.html`` extends whatever ``mfa_layout`` names, and ``render``
below puts it in the context:

- no ``MFA_BASE_TEMPLATE``: nothing, so ``mfa/standalone.html``, a complete page of its own;
- ``MFA_BASE_TEMPLATE`` set: a small template compiled here that extends the site's base and
  maps the app's two blocks onto the site's (``MFA_BASE_BLOCKS``), adding the app's wrapper,
  CSS, JavaScript and messages, which no site base can be relied on to provide.

A site may instead override ``mfa/base.html`` in its own templates; ``mfa/_chrome.html`` is
then what its content block includes to get the app's CSS, JavaScript and messages.
"""

import functools
from collections.abc import Mapping
from typing import Any

from django.contrib.messages import get_messages
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render as django_render
from django.template import Template

from .conf import settings

__all__ = ["BLOCK_ROLES", "base_blocks", "layout", "page_context", "render"]

# The roles a site's block can play, and the block name each defaults to. "head", when the
# site's base has such a block inside <head>, receives the CSS and JavaScript link tags, which
# otherwise go at the top of the content block (valid HTML: body-ok links, a deferred script).
BLOCK_ROLES = {"title": "title", "content": "content", "head": None}


def base_blocks() -> dict[str, str]:
    """Return MFA_BASE_BLOCKS merged with the defaults, checked: role -> site's block name."""
    given = settings.BASE_BLOCKS
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured("MFA_BASE_BLOCKS must be a dict such as {'content': 'main'}.")
    unknown = sorted(str(role) for role in given if role not in BLOCK_ROLES)
    if unknown:
        raise ImproperlyConfigured(
            f"MFA_BASE_BLOCKS has unknown roles {unknown}: use {sorted(BLOCK_ROLES)}."
        )
    blocks = {role: name for role, name in {**BLOCK_ROLES, **given}.items() if name is not None}
    for role, name in blocks.items():
        # The names are written into template source: only identifiers, never tag syntax.
        if not (isinstance(name, str) and name.isidentifier() and name.isascii()):
            raise ImproperlyConfigured(f"MFA_BASE_BLOCKS[{role!r}] = {name!r} is not a block name.")
    return blocks


@functools.lru_cache(maxsize=16)
def _compile(blocks: tuple[tuple[str, str], ...]) -> Template:
    named = dict(blocks)
    source = "{% extends mfa_base_template %}"
    if "head" in named:
        source += (
            f"{{% block {named['head']} %}}{{{{ block.super }}}}"
            '{% include "mfa/_assets.html" %}{% endblock %}'
        )
    source += (
        f"{{% block {named['title']} %}}{{% block mfa_title %}}{{% endblock %}}{{% endblock %}}"
        f'{{% block {named["content"]} %}}<div class="mfa">{{% include "mfa/_chrome.html" %}}'
        "{% block mfa_content %}{% endblock %}</div>{% endblock %}"
    )
    return Template(source, origin=None, name="mfa layout")


def layout() -> Template | None:
    """Return the template that puts the app's pages in the site's base, or None (standalone)."""
    if not settings.BASE_TEMPLATE:
        return None
    # Compiled once per block mapping: the site's base is named by a context variable, so it
    # is looked up (and reloaded in development) like any other template.
    return _compile(tuple(sorted(base_blocks().items())))


def page_context(request: HttpRequest) -> dict[str, Any]:
    """Return what mfa/base.html and its includes need, whatever the site's context processors."""
    return {
        "mfa_layout": layout(),
        "mfa_base_template": settings.BASE_TEMPLATE,
        "mfa_assets_in_head": bool(settings.BASE_TEMPLATE) and "head" in base_blocks(),
        "mfa_show_messages": settings.SHOW_MESSAGES,
        # Not the "messages" of the context processor, which a site may not have installed.
        "mfa_messages": get_messages(request),
    }


def render(
    request: HttpRequest,
    template_name: str,
    context: Mapping[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    """Render one of the app's pages, as django.shortcuts.render does, in the configured base."""
    return django_render(
        request, template_name, {**page_context(request), **(context or {})}, status=status
    )
