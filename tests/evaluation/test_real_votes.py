"""Real human votes: PandaLM's 999 pairs × the same 3 annotators (../shared/data/pandalm_votes.jsonl).

Imported as judgments (annotate.imports.import_judgments), recomputed, and shown on the
dashboard. Known facts: raw pairwise agreement over these votes is 0.92; the authors report
Cohen's kappa 0.85–0.88 between annotators after removing high-disagreement items (so on all
items it is somewhat lower). The display order was not recorded, so position bias is n/a.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotate.models import Judgment, Project
from evaluation.models import AnnotatorQuality
from evaluation.quality.compute import recompute_quality

pytestmark = pytest.mark.django_db


@pytest.fixture
def pandalm(shared_data, settings):
    path = shared_data / "pandalm_votes.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    imports = pytest.importorskip("annotate.imports")
    if not hasattr(imports, "import_judgments"):
        pytest.skip("annotate.imports.import_judgments is not there yet")
    settings.PREFLOOP_AUTO_QUALITY = False
    settings.PREFLOOP_QUALITY_BOOTSTRAP = 200
    settings.PREFLOOP_QUALITY_BOOTSTRAP_TIME = 50
    settings.PREFLOOP_QUALITY_BOOTSTRAP_BT = 20
    project = Project.objects.create(name="PandaLM votes")
    with path.open("rb") as fh:
        result = imports.import_judgments(project, fh, filename=path.name)
    assert result.judgments_created == 2997
    return project


def test_pandalm_quality_figures_and_dashboard(pandalm, client):
    project = pandalm
    report = recompute_quality(project)
    data = report.data
    overall = data["agreement"]["overall"]
    raw = overall["raw_agreement"]
    alpha = overall["krippendorff_alpha"]
    cohen = overall["cohen_kappa"]
    fleiss = overall["fleiss_kappa"]
    rows = list(AnnotatorQuality.objects.filter(project=project).select_related("annotator"))
    print(
        f"\nPandaLM: {data['n_judgments']} judgments, {data['n_items']} comparisons, "
        f"{data['n_annotators']} annotators\n"
        f"  raw agreement      {raw['value']:.4f} [{raw['low']:.4f}, {raw['high']:.4f}]\n"
        f"  raw w/o ties       {overall['raw_agreement_no_ties']['value']:.4f}\n"
        f"  Krippendorff alpha {alpha['value']:.4f} [{alpha['low']:.4f}, {alpha['high']:.4f}]\n"
        f"  Fleiss kappa       {fleiss['value']:.4f}\n"
        f"  mean Cohen kappa   {cohen['value']:.4f} [{cohen['low']:.4f}, {cohen['high']:.4f}]"
    )
    for q in sorted(rows, key=lambda q: q.annotator.username):
        print(
            f"  {q.annotator.username}: n={q.n_judgments} DS acc={q.estimated_accuracy:.3f} "
            f"tie={q.tie_rate:.3f} length bias={q.length_bias:+.3f} weight={q.weight:.3f} flags={q.flags}"
        )

    assert data["n_judgments"] == 2997 and data["n_items"] == 999 and data["n_annotators"] == 3
    assert raw["value"] == pytest.approx(0.92, abs=0.01)
    assert raw["low"] < raw["value"] < raw["high"]
    assert 0.6 < alpha["value"] < 0.95
    assert 0.6 < cohen["value"] < 0.95
    assert len(rows) == 3
    for q in rows:
        assert q.n_judgments == 999
        assert 0 < q.weight <= 1
        assert q.position_bias is None  # display order unknown for these votes
        assert q.gold_accuracy is None  # no gold items
        assert 0.5 < q.estimated_accuracy <= 1
    assert data["rounds"] and len(data["rounds"][0]["models"]) >= 2

    User = get_user_model()
    admin = User.objects.create(username="root", is_superuser=True, is_staff=True)
    client.force_login(admin)
    response = client.get(reverse("quality_dashboard", args=[project.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    shown = re.search(r'data-stat="raw_agreement">([0-9.]+)<', body).group(1)
    assert shown == f"{raw['value']:.2f}" == "0.92"
    assert re.search(r'data-stat="krippendorff_alpha">([0-9.]+)<', body).group(1) == f"{alpha['value']:.2f}"
    assert body.count('class="q-row') == 3
    for q in rows:
        assert q.annotator.username in body
    assert "<svg" in body and "Model win rates by round" in body
    assert Judgment.objects.filter(project=project).count() == 2997  # nothing changed by computing
