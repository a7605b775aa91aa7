# Judgment.a_on_left: NULL = display order unknown (imported votes without "display").
#
# Existing rows keep their value: imported judgments written before this change were stored
# with a_on_left=True whether or not their file said "display": "a_left", so a True cannot be
# told apart from "unknown" here (turning them all into NULL would drop real orders and leave a
# one-sided sample). The quality statistics still give such annotators no position bias, since
# they saw only one order (evaluation.quality.compute._order_known).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('annotate', '0002_queue_open_partial_index'),
    ]

    operations = [
        migrations.AlterField(
            model_name='judgment',
            name='a_on_left',
            field=models.BooleanField(blank=True, help_text='Whether response A was displayed on the left; empty (NULL) when the display order is unknown.', null=True),
        ),
        migrations.AddConstraint(
            model_name='judgment',
            constraint=models.CheckConstraint(condition=models.Q(('a_on_left__isnull', False), ('assignment__isnull', True), _connector='OR'), name='judgment_app_order_known'),
        ),
    ]
