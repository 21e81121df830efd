"""The one Jinja2 set-up for the HTML dermsearch writes (search's contact sheet, evaluate's rating
sheet): templates are package data, autoescaping is on for every template and string, so ids,
diagnoses, messages and attributions are always text, never markup; an undefined name is an error."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["package_env"]


def package_env(folder: str) -> Environment:
    """A Jinja2 environment over the package folder ``dermsearch/<folder>`` (e.g. ``search/templates``)."""
    return Environment(loader=PackageLoader("dermsearch", folder),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
