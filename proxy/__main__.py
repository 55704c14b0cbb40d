"""``python -m proxy``: the same as the ``cvmfs-proxy`` console script."""

from .cli import main

main()
