"""``python -m pretrain`` and the ``lowssl-pretrain`` console script (``pretrain.train.main``)."""

import sys

from pretrain.train import main

if __name__ == "__main__":
    sys.exit(main())
