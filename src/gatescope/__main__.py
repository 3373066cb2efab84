"""``python -m gatescope`` is the ``gatescope`` command."""

from .cli import main

raise SystemExit(main())
