"""`python -m hf_px VERB ...` (also under `accelerate launch -m hf_px ...`)."""

import sys

from .cli import main

sys.exit(main())
