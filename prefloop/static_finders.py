"""Serve plotly.js from the pinned `plotly` package as our own static file, so charts
work offline (no CDN) and the version moves with requirements.txt, not a copied blob."""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_PATH = "vendor/plotly.min.js"


def plotly_js_dir() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data"


class PlotlyFinder(BaseFinder):
    """Finds exactly one file, vendor/plotly.min.js, for runserver, tests and collectstatic."""

    def check(self, **kwargs):
        from django.core.checks import Error

        try:
            found = (plotly_js_dir() / "plotly.min.js").is_file()
        except ImportError:
            found = False
        if found:
            return []
        return [Error("plotly.min.js not found: install the pinned `plotly` package (requirements.txt); "
                      "the progress pages draw their charts with it", id="prefloop.E001")]

    def find(self, path: str, find_all: bool = False, **kwargs):
        if path != PLOTLY_STATIC_PATH:
            return [] if find_all else None
        found = str(plotly_js_dir() / "plotly.min.js")
        return [found] if find_all else found

    def list(self, ignore_patterns):
        storage = FileSystemStorage(location=str(plotly_js_dir()))
        storage.prefix = "vendor"  # collectstatic writes it as vendor/plotly.min.js
        yield "plotly.min.js", storage
