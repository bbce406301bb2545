"""``python -m router`` runs the router, like the ``paas-router`` console script."""

import sys

from router.main import main

sys.exit(main())
