"""The pytest-trio harness users can import: in-process server, AnyConnect test client, in-memory tun."""
