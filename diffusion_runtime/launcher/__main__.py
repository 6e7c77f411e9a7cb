"""``python -m diffusion_runtime.launcher``: the serve command (see ``cli``)."""

import sys

from diffusion_runtime.launcher.cli import main

sys.exit(main())
