"""`python -m lungviz` runs the command line."""

import sys

from lungviz.cli import main

sys.exit(main())
