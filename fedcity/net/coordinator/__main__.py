"""``python -m fedcity.net.coordinator``: run the coordinator server."""

import sys

from fedcity.net.coordinator.server import main

sys.exit(main())
