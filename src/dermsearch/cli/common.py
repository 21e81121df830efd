"""What every command handler shares: the stderr console and the usage error (exit 2)."""

from rich.console import Console

from ..errors import ConfigError

__all__ = ["err", "UsageError"]

err = Console(stderr=True, highlight=False, soft_wrap=True)


class UsageError(ConfigError):
    """A command given options it cannot work with; the CLI prints the message and exits 2."""
