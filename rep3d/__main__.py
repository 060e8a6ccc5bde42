import sys

from rep3d.cli import console_main

sys.exit(console_main())
