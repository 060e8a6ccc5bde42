import sys

from rep3d.cli import main

sys.exit(main())
