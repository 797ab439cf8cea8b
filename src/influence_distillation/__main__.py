"""`python -m influence_distillation` runs the CLI (this is also the torchrun entry point)."""

import sys

from .cli import main

sys.exit(main())
