"""A griffe extension for the Python API page (mkdocs.yml, mkdocstrings' python handler): mpcore's docstrings
use Sphinx roles (:func:`mpcore.generate`, :class:`...`) that Markdown would show literally; they become code
spans (`mpcore.generate`)."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and docstring.value:
            docstring.value = ROLE.sub(r"`\1`", docstring.value)
