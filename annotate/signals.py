"""Signals other apps listen to (annotate depends on no other app)."""
from django.dispatch import Signal

#: Sent after judgments were imported in bulk (``bulk_create`` sends no ``post_save``).
#: Arguments: ``project``, ``count``.
judgments_imported = Signal()

#: Sent after a project's gold answers changed (set, re-answered or removed), once the change
#: commits. Arguments: ``project``.
gold_changed = Signal()

#: Sent after a project's pair order changed (``annotate.services.set_pair_order``), once the
#: change commits. Arguments: ``project``, ``old``, ``new`` (``PairOrder`` values), ``user``.
#: The active-selection service (``training.active``) queues the priority computation.
pair_order_changed = Signal()
