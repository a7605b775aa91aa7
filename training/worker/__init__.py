"""The GPU worker's side of training, called by the Celery tasks (``training.tasks``):

=================  ==========================================================================
``execute.py``     one run start to finish: claim, rows, train, register the output model
``reporting.py``   the trainer's callbacks writing into the run's row; the heartbeat thread
``launcher.py``    the trainer in a subprocess under ``accelerate launch`` (several GPUs)
``generation.py``  text from a registered model (the run page's sample, the next round)
=================  ==========================================================================

torch and the trainer are imported inside functions, so importing these modules loads neither.
"""
