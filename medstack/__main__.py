"""``python -m medstack ...`` is the ``medstack`` console script."""

from medstack.cli import main

raise SystemExit(main())
