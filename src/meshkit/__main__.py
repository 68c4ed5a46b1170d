"""``python -m meshkit``: the same as the ``meshkit`` command."""

from meshkit.cli import main

main()
