"""Run ``python -m p2pmarl`` as the ``p2pmarl`` command."""

from p2pmarl.cli import main

raise SystemExit(main())
