"""cvmfs-proxy: a caching HTTP/1.1 forward proxy for CernVM-FS clients (see proxy/server.py)."""
