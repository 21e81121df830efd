"""What every command handler shares: the stderr console and the usage error (exit 2)."""

from rich.console import Console
from rich.text import Text

from ..errors import ConfigError

__all__ = ["err", "UsageError", "emit", "tagged"]

# markup off: messages carry file names, ids and reasons from the data, printed as they are; a coloured
# prefix is built with ``tagged``, never by interpolating data into markup
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def tagged(prefix: str, style: str, text: object) -> Text:
    """``prefix`` in ``style``, a space, then ``str(text)`` verbatim (brackets, backslashes and all)."""
    return Text.assemble((prefix, style), " ", str(text))


class UsageError(ConfigError):
    """A command given options it cannot work with; the CLI prints the message and exits 2."""


def emit(rows: dict, as_json: bool, line) -> None:
    """Print ``rows`` (name -> figures) as one JSON object, or one ``line(name, figures)`` each."""
    import json

    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        for name, figures in rows.items():
            print(line(name, figures))
