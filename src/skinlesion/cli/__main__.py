"""``python -m skinlesion.cli``."""

from . import main

main()
