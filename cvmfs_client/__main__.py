"""``python -m cvmfs_client``: the ``cvmfs-client`` command."""

from cvmfs_client.entry import main

main()
