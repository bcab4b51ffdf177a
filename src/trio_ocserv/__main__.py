from trio_ocserv.cli import main

raise SystemExit(main())
