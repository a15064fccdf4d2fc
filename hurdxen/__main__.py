from hurdxen.cli import main

raise SystemExit(main())
