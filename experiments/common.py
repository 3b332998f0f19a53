"""What every experiment entry point does around ``train_and_evaluate``."""

import sys
from typing import Callable


def run(train: Callable[[], object]) -> None:
    """Initialises multi-host JAX first, then runs ``train``; maps known failures to exit codes.

    * preemption (SIGTERM): the checkpoint is saved, exit code 143; re-run to resume;
    * a config, input or checkpoint mismatch, a missing dataset, a non-finite loss: one line
      naming the problem and the fix, exit code 2, no traceback.
    """
    from absl import logging  # pylint: disable=g-import-not-at-top

    from jaxkd.core import distributed  # pylint: disable=g-import-not-at-top

    logging.set_verbosity(logging.ERROR)  # Orbax logs every file operation

    distributed.maybe_initialize()
    from jaxkd.core import checkpoint, errors, loop  # pylint: disable=g-import-not-at-top
    from jaxkd.data import DatasetNotPreparedError  # pylint: disable=g-import-not-at-top

    try:
        train()
    except loop.Preempted as e:
        print(f"jaxkd: {e}", file=sys.stderr, flush=True)
        sys.exit(loop.PREEMPTED_EXIT_CODE)
    except (errors.ConfigError, checkpoint.CheckpointMismatchError, DatasetNotPreparedError,
            loop.NonFiniteError) as e:
        print(f"jaxkd: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
