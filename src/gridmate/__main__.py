"""``python -m gridmate``: the same as the ``gridmate`` command."""

from gridmate.cli import main

raise SystemExit(main())
