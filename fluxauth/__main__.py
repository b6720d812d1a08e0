"""``python -m fluxauth``: the same command as the ``fluxauth`` console script."""

from fluxauth.cli.main import entry_point

if __name__ == "__main__":
    entry_point()
