import sys

from affectus.cli import main

sys.exit(main())
