"""What every command handler shares: the stderr console and the usage error (exit 2)."""

from rich.console import Console

from ..errors import ConfigError

__all__ = ["err", "UsageError", "emit"]

# markup off: messages carry file names, ids and reasons from the data, printed as they are; the few
# that colour a prefix pass markup=True and escape what they interpolate (``rich.markup.escape``)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


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
