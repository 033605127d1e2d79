"""``python -m asrdistill.cli``: what ``run-jobs`` and ``torchrun -m asrdistill.cli train`` start."""

from asrdistill.cli import main

raise SystemExit(main())
