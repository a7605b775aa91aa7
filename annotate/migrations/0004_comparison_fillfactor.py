"""Room on every page of annotate_comparison for updated row versions (PostgreSQL only).

Every claim and every judgment updates its comparison's counters. With full pages each update
writes the new row version to another page and a new entry into each of the table's indexes;
with room left on the page (fillfactor 80) an update that leaves the indexed columns alone is a
heap-only tuple update: same page, no index entries. Applies to pages written from now on
(a table rewrite, e.g. VACUUM FULL, applies it to the existing ones).
"""
from django.db import migrations

FILLFACTOR = 80


def set_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE annotate_comparison SET (fillfactor = {FILLFACTOR})")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE annotate_comparison RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("annotate", "0003_judgment_a_on_left_nullable")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
