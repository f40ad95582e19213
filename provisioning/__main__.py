"""`python -m provisioning`: the same as the `provisioning` command."""

import sys

from provisioning.cli import main

sys.exit(main())
