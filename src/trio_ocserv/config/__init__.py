"""ocserv.conf: lexer, parser, typed model, defaults and validation."""
