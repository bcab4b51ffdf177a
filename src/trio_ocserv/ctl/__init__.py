"""Control socket server and the occtl-compatible `ctl` command.

Server side: `server.CtlServer` serves the Unix socket, `handler` carries out requests against a
`view.ServerView` / `view.ServerActions` (built on ServerState by `state_view`), `event_feed`
fans out `show events`. Client side: `cli.ctl_main` parses occtl's options and `commands`,
`client` talks `protocol`, and `render_text` / `render_json` print what occtl prints.
"""
