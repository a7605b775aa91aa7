"""``python -m training.trainer``: the trainer's command line (see ``training.trainer.cli``)."""

from training.trainer.cli import main

main()
