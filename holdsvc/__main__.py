import sys

from holdsvc.cli import main

sys.exit(main())
