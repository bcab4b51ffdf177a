"""The Trio shell: listeners, per-client tasks, tunnels, timers, reload and stop."""
