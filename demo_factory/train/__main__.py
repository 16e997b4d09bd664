"""`python -m demo_factory.train`: train the embedded demo SALMONN (see pipeline.py)."""

import sys

from .pipeline import main

sys.exit(main())
