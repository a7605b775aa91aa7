"""Signals other apps listen to (annotate depends on no other app)."""
from django.dispatch import Signal

#: Sent after judgments were imported in bulk (``bulk_create`` sends no ``post_save``).
#: Arguments: ``project``, ``count``.
judgments_imported = Signal()
