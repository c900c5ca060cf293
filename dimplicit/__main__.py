import sys

from dimplicit.cli import main

sys.exit(main())
