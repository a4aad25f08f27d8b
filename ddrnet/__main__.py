import sys

from ddrnet.cli import main

sys.exit(main())
