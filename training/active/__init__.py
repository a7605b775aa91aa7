"""Active pair selection: priorities that make the queue serve first the comparisons whose
outcome would teach the latest model most (``margin``) or on which the pools disagree most
(``disagreement``). The math is in :mod:`evaluation.stats.active`; the job in :mod:`.services`;
the worker's scoring in :mod:`.scoring`; bulk writes in :mod:`.writes`; pages and API in
:mod:`.views` and :mod:`.api`."""
