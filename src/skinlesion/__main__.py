"""``python -m skinlesion``: the ``skinlesion`` command."""

from .cli import main

main()
