"""cvmfs-client: CernVM-FS for jobs where the real client cannot run."""

__version__ = "0.1.0"
