"""Drop the single-column indexes of the assignments' and judgments' project and annotator
foreign keys: composite indexes that begin with the same column cover every lookup by it
(assignment_expiry_idx, assignment_annotator_idx, judgment_project_time_idx and the unique
constraints on (annotator, comparison)), and each claim and submit wrote them.

Only the indexes go: Django's own AlterField would also drop and re-add the foreign-key
constraints, which re-validates every row of both tables. The index names are the ones Django
gave them, the same on PostgreSQL and SQLite.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


INDEXES = [
    ("annotate_assignment", "annotator_id", "annotate_assignment_annotator_id_78f474f8"),
    ("annotate_assignment", "project_id", "annotate_assignment_project_id_8d508500"),
    ("annotate_judgment", "annotator_id", "annotate_judgment_annotator_id_b695945d"),
    ("annotate_judgment", "project_id", "annotate_judgment_project_id_66c86584"),
]


class Migration(migrations.Migration):

    dependencies = [
        ('annotate', '0009_pair_order_information'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f'DROP INDEX IF EXISTS "{name}"', f'CREATE INDEX "{name}" ON "{table}" ("{column}")')
                for table, column, name in INDEXES
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='assignment',
                    name='annotator',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='assignments', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='assignment',
                    name='project',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='assignments', to='annotate.project'),
                ),
                migrations.AlterField(
                    model_name='judgment',
                    name='annotator',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='judgments', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='judgment',
                    name='project',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='judgments', to='annotate.project'),
                ),
            ],
        ),
    ]
