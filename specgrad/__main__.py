import sys

from specgrad.cli import main

sys.exit(main())
