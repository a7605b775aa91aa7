"""Training services: the business logic the views, the REST API, the management commands and the
Celery tasks call. One module per concern:

======================  ========================================================================
``errors.py``           ``TrainingError`` (a refusal with a message and the field at fault)
``hyperparameters.py``  hyperparameters checked against ``training.config.TrainConfig``
``registry.py``         the model registry: model folders checked without torch, ``ModelVersion``
``rows.py``             the export rows a run trains on, checked; a fresh export at launch
``runs.py``             a run's life: launch, cancel, logs, claim by a worker, recovery
``sampling.py``         a sample on the run page; the next annotation round
======================  ========================================================================

Nothing here imports torch or transformers at import time: the web process validates everything
it can (hyperparameters, the model folder's files, the export's size and weights) and the GPU
worker (``training.worker``) does the rest before any compute (the model actually loads, the rows
tokenize -- long pairs are truncated, never refused --, CUDA present). Jobs are sent to Celery by task name once the
transaction commits (``current_app.tasks[name]``; ``TrainingConfig.ready`` registers the tasks),
so ``training.tasks`` imports these modules and they never import it.
"""
