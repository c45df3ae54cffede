"""``python -m seqlens``: the same command line as the ``seqlens`` script."""

from seqlens.cli import main

raise SystemExit(main())
