"""A local Sphinx extension with two fixes for the offline site.

sphinx-thebe registers its inline configuration script again on every read phase, so a page can
carry ``const THEBE_JS_URL = ...`` twice, which the browser reports as a redeclaration error. We
drop duplicates from each page's script list (also sphinx-togglebutton's).

myst-nb embeds the notebook's saved widget state (every model of every slider, with the figures
its output widget showed) in each page that has a widget, for a widget manager the offline site
does not load: a ``plots.control`` shows its pre-rendered player there instead, so the state is
dropped.
"""

from __future__ import annotations

from typing import Any

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _dedupe_scripts(
    app: Any, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    seen, unique = set(), []
    for js in context.get("script_files", []):
        if (getattr(js, "attributes", None) or {}).get("type") == WIDGET_STATE:
            continue  # the widgets' saved state: nothing on the site reads it
        # the same inline script is registered once with filename None and once with ""
        name = getattr(js, "filename", js) or ""
        key = (str(name), tuple(sorted((getattr(js, "attributes", None) or {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"][:] = unique  # in place: it is the builder's own list


def setup(app: Any) -> dict[str, Any]:
    # run after the extensions that add page scripts
    app.connect("html-page-context", _dedupe_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
