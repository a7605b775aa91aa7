"""Gold (calibration) answers: one flag on one comparison.

A comparison is gold exactly when it has a ``GoldAnswer``; ``Comparison.is_gold`` mirrors that for
the queue's index, and every write here keeps the two together (the Django admin goes through
these functions too). Gold is set on existing comparisons -- from the project's Gold page, the
API, or an import line with ``gold`` whose pair already exists -- never by adding a second copy
of a pair: an annotator who met the same pair twice would know one of them is gold.

* ``set_gold(project, ids, answer)`` / ``unset_gold(project, ids)``: the page and the API.
* ``existing_pairs(project, pairs, prompt_ids)``: the stored comparisons of imported gold lines,
  matched by prompt and the two response texts (any round, any model names, either order);
  ``mark_imported(...)`` flags them with the line's answer mapped to the stored order.
* ``gold_twins(project, pairs, prompt_ids)``: the same match for regular lines against the gold
  comparisons: such a line joins the gold comparison (a duplicate in the import's summary, its
  line named), never a regular copy of a gold pair.
* ``gold_warning(project)``: the settings page's warning for a gold share with no gold items.

Gold comparisons stay open (every annotator may be served each once); an unflagged one is open
again only while it has free slots. The quality statistics are told (``gold_changed``) so that
accuracies follow the new answers.
"""
from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from .models import Choice, Comparison, GoldAnswer, Project
from .signals import gold_changed

GOLD_ANSWERS = (Choice.A.value, Choice.B.value, Choice.TIE.value)
FLIP = {"a": "b", "b": "a"}


class GoldError(ValueError):
    """A gold request refused with a message for the user; nothing was changed."""


def check_answer(project: Project, answer) -> str:
    value = str(answer or "").strip().lower()
    if value not in GOLD_ANSWERS:
        raise GoldError(f"the gold answer must be one of a, b, tie (got {answer!r})")
    if value == "tie" and not project.allow_ties:
        raise GoldError("the gold answer is 'tie' but this project does not allow ties")
    return value


def _project_ids(project: Project, comparison_ids: Iterable) -> list[int]:
    try:
        ids = sorted({int(i) for i in comparison_ids})
    except (TypeError, ValueError) as exc:
        raise GoldError(f"comparison ids must be integers ({exc})") from None
    if not ids:
        raise GoldError("select at least one comparison")
    # ids beyond the database's 64-bit range name no comparison (and would overflow the query)
    possible = [i for i in ids if 0 < i < 2**63]
    found = set(Comparison.objects.filter(project=project, pk__in=possible).values_list("pk", flat=True))
    missing = [i for i in ids if i not in found]
    if missing:
        raise GoldError(f"no comparison {', '.join(map(str, missing[:10]))} in this project")
    return ids


def _write(project: Project, answers: dict[int, str]) -> None:
    """Give each comparison its answer (creating or updating its GoldAnswer) and the gold flag."""
    have = set(GoldAnswer.objects.filter(comparison_id__in=list(answers)).values_list("comparison_id", flat=True))
    by_answer: dict[str, list[int]] = {}
    for cid, answer in answers.items():
        if cid in have:
            by_answer.setdefault(answer, []).append(cid)
    for answer, ids in by_answer.items():
        GoldAnswer.objects.filter(comparison_id__in=ids).update(answer=answer)
    GoldAnswer.objects.bulk_create(
        [GoldAnswer(comparison_id=cid, answer=a) for cid, a in answers.items() if cid not in have]
    )
    Comparison.objects.filter(pk__in=list(answers)).update(is_gold=True, is_open=True)


def _make_regular(project: Project, rows) -> None:
    """Unflag ``rows``; each is open again only while it has free slots (the queue's rule)."""
    rows.update(is_gold=False)
    rows.filter(slots_taken__gte=project.overlap).update(is_open=False)
    rows.filter(slots_taken__lt=project.overlap).update(is_open=True)


def _changed(project: Project) -> None:
    transaction.on_commit(lambda: gold_changed.send(sender=GoldAnswer, project=project))


def set_gold(project: Project, comparison_ids: Iterable, answer) -> int:
    """Make these comparisons of ``project`` gold with ``answer`` ("a", "b" or "tie", in each
    comparison's stored order). Already-gold ones get the new answer. Returns how many."""
    answer = check_answer(project, answer)
    with transaction.atomic():
        ids = _project_ids(project, comparison_ids)
        _write(project, {cid: answer for cid in ids})
        _changed(project)
    return len(ids)


def unset_gold(project: Project, comparison_ids: Iterable) -> int:
    """Make these comparisons regular again (their judgments stay). Returns how many were gold."""
    with transaction.atomic():
        ids = _project_ids(project, comparison_ids)
        n, _ = GoldAnswer.objects.filter(comparison_id__in=ids).delete()
        _make_regular(project, Comparison.objects.filter(pk__in=ids))
        _changed(project)
    return n


def flag_from_answer(answer: GoldAnswer) -> None:
    """After a GoldAnswer was saved elsewhere (the admin): its comparison is gold and open."""
    Comparison.objects.filter(pk=answer.comparison_id).update(is_gold=True, is_open=True)
    _changed(answer.comparison.project)


def unflag_after_delete(comparison: Comparison) -> None:
    """After a GoldAnswer was deleted elsewhere (the admin): its comparison is regular again."""
    project = comparison.project
    _make_regular(project, Comparison.objects.filter(pk=comparison.pk))
    _changed(project)


# ---- imports ---------------------------------------------------------------------------------


def existing_pairs(project: Project, pairs: list, prompt_ids: dict[str, int]) -> dict[str, list[tuple[int, bool]]]:
    """``{pair.key: [(comparison id, same order), ...]}`` for the gold ``pairs`` (validated import
    lines) whose prompt and two response texts are already a comparison of ``project``, in any
    round, under any model names, in either order. ``prompt_ids``: prompt hash -> id of the
    project's stored prompts (the import has read them)."""
    return _same_texts([p for p in pairs if p.gold], prompt_ids, Comparison.objects.filter(project=project))


def gold_twins(project: Project, pairs: list, prompt_ids: dict[str, int]) -> dict[str, list[tuple[int, bool]]]:
    """``existing_pairs`` the other way round: the regular (non-gold) ``pairs`` whose prompt and two
    response texts are a *gold* comparison of ``project`` (any round, model names, order). The
    import joins such a line to that comparison instead of adding a regular copy of a gold pair
    (an annotator served both would learn which one is gold)."""
    return _same_texts([p for p in pairs if not p.gold], prompt_ids,
                       Comparison.objects.filter(project=project, is_gold=True))


def text_key(pair) -> tuple[str, str, str]:
    """A validated line's identity by texts only: its prompt and its two responses in either order
    (what ``existing_pairs`` and ``gold_twins`` match; model names and round do not count)."""
    return (pair.prompt_key, *sorted((pair.hash_a, pair.hash_b)))


def _same_texts(pairs: list, prompt_ids: dict[str, int], comparisons) -> dict[str, list[tuple[int, bool]]]:
    wanted: dict[int, list] = {}
    for p in pairs:
        pid = prompt_ids.get(p.prompt_key)
        if pid is not None:
            wanted.setdefault(pid, []).append(p)
    found: dict[str, list[tuple[int, bool]]] = {}
    pids = sorted(wanted)
    for start in range(0, len(pids), 500):
        rows = comparisons.filter(prompt_id__in=pids[start:start + 500]).values_list(
            "pk", "prompt_id", "response_a__content_hash", "response_b__content_hash"
        )
        for cid, pid, h_a, h_b in rows.order_by("pk"):
            for p in wanted[pid]:
                if (h_a, h_b) == (p.hash_a, p.hash_b):
                    found.setdefault(p.key, []).append((cid, True))
                elif (h_a, h_b) == (p.hash_b, p.hash_a):
                    found.setdefault(p.key, []).append((cid, False))
    return found


def mark_imported(project: Project, pairs: list, matches: dict[str, list[tuple[int, bool]]]) -> int:
    """Flag the existing comparisons of imported gold lines with the line's answer, mapped to the
    stored order (a line listing the stored B first says "a" for the stored "b"). Runs inside the
    import's transaction. Returns how many comparisons were flagged or re-answered."""
    answers: dict[int, str] = {}
    for p in pairs:
        for cid, same in matches.get(p.key, ()):
            answers[cid] = p.gold if same else FLIP.get(p.gold, p.gold)
    if answers:
        _write(project, answers)
        _changed(project)
    return len(answers)


# ---- the settings page -----------------------------------------------------------------------


def gold_warning(project: Project) -> str:
    """A warning when the project serves a share of gold items but has none ("" otherwise)."""
    if project.gold_rate and project.gold_rate > 0 and not Comparison.objects.filter(
        project=project, is_gold=True
    ).exists():
        return (
            f"The gold share is {project.gold_rate:.0%}, but this project has no gold comparisons: "
            f"annotators get no calibration items, so their accuracy cannot be measured against "
            f"known answers. Mark comparisons as gold on the Gold page (or import lines with a "
            f"“gold” answer), or set the gold share to 0."
        )
    return ""
