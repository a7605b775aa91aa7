"""``manage.py load_demo``: the demo project, its pools, demo logins and data. Idempotent.

Creates (or brings back to the demo state) the users ``admin`` (superuser and project admin),
``researcher`` and ``annot1`` … ``annot6`` — all with the password ``prefloop-demo`` — and the
project "Demo: helpful assistant" with three annotator pools, two annotators in each, and the
comparisons of ``annotate.demo_data`` imported through ``annotate.imports.import_comparisons``
(the real import path; running the command again imports nothing new).
"""
from __future__ import annotations

import io

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate import demo_data
from annotate.imports import import_comparisons
from annotate.models import Membership, Pool, Project, Role

PASSWORD = "prefloop-demo"
PROJECT_NAME = "Demo: helpful assistant"

POOLS = [
    ("EU generalists", {"region": "EU", "language": "en", "expertise": "general"}, 0.4),
    ("US experts", {"region": "US", "language": "en", "expertise": "software"}, 0.35),
    ("APAC students", {"region": "APAC", "language": "en", "background": "university students"}, 0.25),
]
ANNOTATORS = [
    ("annot1", "EU generalists"),
    ("annot2", "EU generalists"),
    ("annot3", "US experts"),
    ("annot4", "US experts"),
    ("annot5", "APAC students"),
    ("annot6", "APAC students"),
]


class Command(BaseCommand):
    help = "Create the demo project, pools, users (password 'prefloop-demo') and data. Safe to run again."

    def handle(self, *args, **options):
        User = get_user_model()

        def user(username: str, *, superuser: bool = False):
            u, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@demo.invalid"})
            u.is_superuser = superuser
            u.is_staff = superuser
            u.is_active = True
            u.set_password(PASSWORD)
            u.save()
            return u

        with transaction.atomic():
            admin = user("admin", superuser=True)
            researcher = user("researcher")
            project, created = Project.objects.get_or_create(
                name=PROJECT_NAME,
                defaults=dict(
                    instructions=demo_data.INSTRUCTIONS,
                    overlap=3,
                    gold_rate=0.15,
                    allow_ties=True,
                    assignment_timeout_s=600,
                    license="CC0-1.0",
                    created_by=admin,
                ),
            )
            pools = {}
            for name, attributes, share in POOLS:
                pools[name], _ = Pool.objects.update_or_create(
                    project=project, name=name, defaults={"attributes": attributes, "target_share": share}
                )
            Membership.objects.update_or_create(
                project=project, user=admin, defaults={"role": Role.ADMIN, "pool": None, "excluded": False}
            )
            Membership.objects.update_or_create(
                project=project, user=researcher, defaults={"role": Role.RESEARCHER, "pool": None, "excluded": False}
            )
            for username, pool in ANNOTATORS:
                Membership.objects.update_or_create(
                    project=project,
                    user=user(username),
                    defaults={"role": Role.ANNOTATOR, "pool": pools[pool], "excluded": False},
                )

        result = import_comparisons(project, io.BytesIO(demo_data.demo_jsonl()), filename="prefloop-demo.jsonl")

        out = self.stdout
        out.write(self.style.SUCCESS(f"{'Created' if created else 'Updated'} the demo project “{project.name}” (id {project.pk})."))
        out.write(
            f"  comparisons: {result.created} new, {result.duplicates} already there "
            f"({result.gold} new gold); {project.comparisons.count()} in the project"
        )
        out.write(f"  pools: {', '.join(f'{n} ({s:.0%})' for n, _, s in POOLS)}")
        out.write(self.style.WARNING("  THIS IS A DEMO: every demo account uses the password 'prefloop-demo'."))
        out.write("  logins: admin (superuser, project admin), researcher, annot1 … annot6 (annotators)")
