"""Sphinx extension of the book (``_config.yml``: ``sphinx.extra_extensions: [vlnb.bookext]``).

- **MathJax without a network.** The equations are rendered by MathJax 2.7 served from the build
  itself: the copy that ships in the ``jupyter-server-mathjax`` wheel on PyPI (Apache-2.0; an optional
  dependency of ``vlnb[book]``) is copied to ``_static/mathjax/`` and ``mathjax_path`` points there, so
  no page loads a script from a CDN. (npm's ``mathjax`` package would also do, but needs node at build
  time; a PyPI wheel installs with everything else.) Without that wheel the build falls back to
  Sphinx's CDN default and says so.
- **Author–year bibliography labels.** Citations render as "[Radford et al., 2021]"
  (``bibtex_reference_style: author_year``); the bibliography uses the same text as its labels
  (``bibtex_default_style: vlnb``) instead of pybtex's alpha labels ("[RKH+21]").
"""

from __future__ import annotations

import shutil
from pathlib import Path

MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full"
MATHJAX_DIR = "mathjax"


def mathjax_source() -> Path | None:
    """The packaged MathJax folder (holding ``MathJax.js``), or None when the wheel is not installed."""
    try:
        # lazy: the book extra; Sphinx loads this module only when the book builds
        import jupyter_server_mathjax
    except ImportError:
        return None
    p = Path(jupyter_server_mathjax.__file__).parent / "static"
    return p if (p / "MathJax.js").exists() else None


# ----------------------------------------------------------------------------------------------
# author–year labels for pybtex
# ----------------------------------------------------------------------------------------------
def _last(person) -> str:
    # lazy: the book extra; Sphinx loads this module only when the book builds
    from pybtex.richtext import Text

    return Text(*person.rich_prelast_names, " " if person.prelast_names else "", *person.rich_last_names).render_as(
        "text").strip()


def author_year_label(entry) -> str:
    """"Radford et al., 2021", "Karpathy and Fei-Fei, 2015", "Krizhevsky, 2009" (as the citations read)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last(p) for p in people]
    if not names:
        who = entry.fields.get("title", entry.key)
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


def _register_pybtex_style() -> None:
    # lazy: the book extra (this block); Sphinx loads this module only when the book builds
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            seen: dict[str, int] = {}
            for entry in sorted_entries:
                label = author_year_label(entry)
                n = seen.get(label, 0)
                seen[label] = n + 1
                yield label if n == 0 else label + "abcdefghij"[n]

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = "vlnb_author_year"
        default_sorting_style = "author_year_title"

    for group, name, cls in (("pybtex.style.labels", "vlnb_author_year", AuthorYearLabelStyle),
                             ("pybtex.style.formatting", "vlnb", AuthorYearStyle)):
        register_plugin(group, name, cls, force=True)  # force: a second Sphinx app in the same process


def _config_inited(app, config) -> None:
    src = mathjax_source()
    if src is None:
        # lazy: the book extra; Sphinx loads this module only when the book builds
        from sphinx.util import logging

        logging.getLogger(__name__).info("vlnb.bookext: jupyter-server-mathjax is not installed; MathJax from a CDN")
        return
    config.mathjax_path = f"{MATHJAX_DIR}/MathJax.js?config={MATHJAX_CONFIG}"
    # MathJax 2 configuration: only the elements MyST marks as math (as myst-parser does for MathJax 3)
    config.mathjax3_config = None
    config.myst_update_mathjax = False  # myst-parser would write a MathJax 3 config that MathJax 2 ignores
    config.mathjax2_config = {
        "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area",
                    "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
        # the wheel ships the STIX-Web fonts only (as Jupyter's classic notebook configures it)
        "HTML-CSS": {"availableFonts": [], "preferredFont": None, "imageFont": None, "webFont": "STIX-Web"},
        "menuSettings": {"zoom": "None"},
    }


def _build_finished(app, exception) -> None:
    src = mathjax_source()
    if exception is not None or src is None or app.builder.format != "html":
        return
    dest = Path(app.outdir) / "_static" / MATHJAX_DIR
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("SVG", "__pycache__"))


def setup(app):
    _register_pybtex_style()
    app.connect("config-inited", _config_inited, priority=900)  # after myst-parser's own MathJax settings
    app.connect("build-finished", _build_finished)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
