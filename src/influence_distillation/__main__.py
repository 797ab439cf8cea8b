"""`python -m influence_distillation` runs the CLI (this is also the torchrun entry point)."""

import sys

from influence_distillation.cli import main

sys.exit(main())
