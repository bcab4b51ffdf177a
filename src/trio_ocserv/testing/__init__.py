"""A pytest-trio harness users can import: in-process server, AnyConnect client, in-memory tun."""
