"""A local Sphinx extension with one fix for the offline site.

sphinx-thebe registers its inline configuration script again on every read phase, so a page can
carry ``const THEBE_JS_URL = ...`` twice, which the browser reports as a redeclaration error. We
drop duplicates from each page's script list (also sphinx-togglebutton's).
"""

from __future__ import annotations

from typing import Any


def _dedupe_scripts(
    app: Any, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    seen, unique = set(), []
    for js in context.get("script_files", []):
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
