"""Control socket server and the occtl-compatible `ctl` command."""
