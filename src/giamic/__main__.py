import sys

from giamic.cli import main

sys.exit(main())
