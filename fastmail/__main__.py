from fastmail.cli import main

raise SystemExit(main())
