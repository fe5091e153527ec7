"""``python -m reference_impl.node --config node.yaml`` (also ``ipsec-interop node``)."""

import sys

from reference_impl.node.runtime import main

sys.exit(main())
