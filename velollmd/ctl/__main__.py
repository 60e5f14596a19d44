"""`python -m velollmd.ctl`: the same as `velollmctl`."""
import sys

from .main import main

sys.exit(main())
