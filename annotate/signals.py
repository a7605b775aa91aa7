"""Signals other apps listen to (annotate depends on no other app)."""
from django.dispatch import Signal

#: Sent after judgments were imported in bulk (``bulk_create`` sends no ``post_save``).
#: Arguments: ``project``, ``count``.
judgments_imported = Signal()

#: Sent after comparisons were imported (``annotate.imports.import_comparisons``), once they
#: commit. Arguments: ``project``, ``count`` (comparisons created). The active-selection service
#: (``training.active``) scores them for a project in an active pair order.
comparisons_imported = Signal()

#: Sent after a project's gold answers changed (set, re-answered or removed), once the change
#: commits. Arguments: ``project``.
gold_changed = Signal()

#: Sent after a project's pair order changed (``annotate.services.set_pair_order``), once the
#: change commits. Arguments: ``project``, ``old``, ``new`` (``PairOrder`` values), ``user``.
#: The active-selection service (``training.active``) queues the priority computation.
pair_order_changed = Signal()
