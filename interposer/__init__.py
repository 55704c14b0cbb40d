"""``cvmfs-client run``: run an unmodified job with /cvmfs visible, under ptrace + seccomp.

See ``interposer/README.md`` for the design and its limits; ``job.run`` is the entry point.
"""
