"""`python -m comfyrun_client`: the same as the `comfyrun` command."""

import sys

from comfyrun_client.cli import main

sys.exit(main())
