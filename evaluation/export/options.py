"""What an export contains: :class:`ExportOptions`, their validation from form, API or
command values (:func:`clean_options`), and the cheap database pre-check that the filters
leave judgments (:func:`precheck`). Every error is an :class:`ExportError` naming the option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from annotate.models import Comparison, Judgment, Membership, Pool, Project

from ..models import ExportFormat
from ..stats.aggregation import METHODS

FORMATS = tuple(ExportFormat.values)  # jsonl, parquet, hf, csv, judgments
DEFAULT_FORMATS = ["jsonl", "parquet", "hf"]
STYLES = ("auto", "standard", "conversational")


class ExportError(ValueError):
    """Options or data that cannot make an export; the message says which and why.

    ``field`` names the option at fault (``"rounds"``, ``"min_confidence"``…) when there is
    one: the message's ``"<option>: "`` prefix, or given explicitly.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        head = message.split(":", 1)[0]
        self.field = field or (head if ":" in message and head.isidentifier() else None)


# --------------------------------------------------------------------------- options


@dataclass
class ExportOptions:
    """What an export contains. Stored (as a dict) in ``Export.params``; see :func:`clean_options`."""

    rounds: list[int] = field(default_factory=list)  # empty = all rounds
    pools: list[int] = field(default_factory=list)  # pool ids; empty = all pools
    method: str = "dawid_skene"
    pool_balanced: bool = False
    min_confidence: float = 0.0
    include_ties: bool = False
    include_both_bad: bool = False
    include_rationales: bool = False
    include_excluded: bool = False
    include_gold: bool = False
    test_fraction: float = 0.1
    seed: int = 0
    stable_pseudonyms: bool = False
    style: str = "auto"
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))

    @property
    def writes_ties(self) -> bool:
        """Whether the pairwise files may hold tie / both-bad rows (and so the ``tie`` column)."""
        return self.include_ties or self.include_both_bad

    @property
    def include_judgments(self) -> bool:
        return "judgments" in self.formats

    def to_params(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict) -> ExportOptions:
        known = {k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
        "",
    }:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    raise ExportError(f"{name}: expected true or false, got {value!r}")


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def clean_options(project: Project, data: dict | ExportOptions | None = None) -> ExportOptions:
    """Validate raw options (form, API or command values) into :class:`ExportOptions`.

    ``pools`` may be ids or names of the project's pools; ``formats`` a list or a comma
    separated string; ``include_judgments: true`` adds the ``judgments`` format (false adds
    nothing). Raises
    :class:`ExportError` naming the bad field.
    """
    if isinstance(data, ExportOptions):
        data = data.to_params()
    data = dict(data or {})
    unknown = set(data) - set(ExportOptions.__dataclass_fields__) - {"include_judgments", "name"}
    if unknown:
        raise ExportError(f"unknown option(s): {', '.join(sorted(unknown))}")
    opts = ExportOptions()

    rounds = []
    for r in _as_list(data.get("rounds")):
        try:
            value = int(r)
        except (TypeError, ValueError):
            raise ExportError(f"rounds: {r!r} is not a round number") from None
        if value < 0:
            raise ExportError(f"rounds: {value} is negative")
        rounds.append(value)
    opts.rounds = sorted(set(rounds))

    pools = []
    project_pools = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    by_name = {name: pk for pk, name in project_pools.items()}
    for p in _as_list(data.get("pools")):
        if isinstance(p, Pool):
            p = p.pk
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit() and int(p) in project_pools):
            if int(p) not in project_pools:
                raise ExportError(f"pools: pool {p} is not in project {project.name!r}")
            pools.append(int(p))
        elif isinstance(p, str) and p in by_name:
            pools.append(by_name[p])
        else:
            known = ", ".join(sorted(by_name)) or "none"
            raise ExportError(f"pools: no pool {p!r} in project {project.name!r} (pools: {known})")
    opts.pools = sorted(set(pools))

    method = data.get("method") or opts.method
    if method not in METHODS:
        raise ExportError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    opts.method = method

    try:
        opts.min_confidence = float(
            data.get("min_confidence") if data.get("min_confidence") not in (None, "") else 0.0
        )
    except (TypeError, ValueError):
        raise ExportError(f"min_confidence: {data.get('min_confidence')!r} is not a number") from None
    if not (0.0 <= opts.min_confidence <= 1.0):
        raise ExportError(f"min_confidence: {opts.min_confidence} is not between 0 and 1")

    try:
        tf = data.get("test_fraction")
        opts.test_fraction = float(tf) if tf not in (None, "") else 0.1
    except (TypeError, ValueError):
        raise ExportError(f"test_fraction: {data.get('test_fraction')!r} is not a number") from None
    if not (0.0 <= opts.test_fraction < 1.0):
        raise ExportError(f"test_fraction: {opts.test_fraction} must be in [0, 1)")

    try:
        seed = data.get("seed")
        opts.seed = int(seed) if seed not in (None, "") else 0
    except (TypeError, ValueError):
        raise ExportError(f"seed: {data.get('seed')!r} is not an integer") from None
    if not (0 <= opts.seed < 2**63):
        raise ExportError("seed: must be a non-negative 63-bit integer")

    for name in (
        "pool_balanced",
        "include_ties",
        "include_both_bad",
        "include_rationales",
        "include_excluded",
        "include_gold",
        "stable_pseudonyms",
    ):
        if name in data and data[name] is not None:
            setattr(opts, name, _as_bool(name, data[name]))

    style = data.get("style") or "auto"
    if style not in STYLES:
        raise ExportError(f"style: {style!r} is not one of {', '.join(STYLES)}")
    opts.style = style

    formats = list(DEFAULT_FORMATS) if data.get("formats") in (None, "") else _as_list(data["formats"])
    for f in formats:
        if f not in FORMATS:
            raise ExportError(f"formats: {f!r} is not one of {', '.join(FORMATS)}")
    if data.get("include_judgments") is not None and _as_bool("include_judgments", data["include_judgments"]):
        formats.append("judgments")  # the same as listing the "judgments" format
    opts.formats = [f for f in FORMATS if f in set(formats)]  # fixed order, no duplicates
    if not opts.formats:
        raise ExportError("formats: choose at least one format")
    if opts.include_rationales and not opts.include_judgments:
        raise ExportError(
            "include_rationales: rationales are written to the judgments file; add the judgments format"
        )
    return opts


# --------------------------------------------------------------------------- pre-check


def describe_filters(opts: ExportOptions, pool_names: dict[int, str]) -> str:
    parts = []
    if opts.rounds:
        parts.append(f"rounds={opts.rounds}")
    if opts.pools:
        parts.append(f"pools={[pool_names.get(p, p) for p in opts.pools]}")
    return ", ".join(parts) or "no filters"


def precheck(project: Project, opts: ExportOptions) -> None:
    """Cheap database checks that the rounds / pools / exclusion filters leave judgments.

    Raises :class:`ExportError` ``"no comparisons match: …"`` naming the filter that empties
    the selection. (``min_confidence`` and the tie options need the aggregation: the build
    checks them.)
    """
    comparisons = Comparison.objects.filter(project=project)
    if not comparisons.exists():
        raise ExportError(f"no comparisons match: project {project.name!r} has no comparisons")
    if opts.rounds:
        comparisons = comparisons.filter(round__in=opts.rounds)
        if not comparisons.exists():
            have = sorted(
                set(Comparison.objects.filter(project=project).values_list("round", flat=True).distinct())
            )
            raise ExportError(
                f"no comparisons match: rounds={opts.rounds} "
                f"(the project's comparisons are in rounds {have})",
                field="rounds",
            )
    judgments = Judgment.objects.filter(project=project)
    if opts.rounds:
        judgments = judgments.filter(comparison__round__in=opts.rounds)
    where = f"in rounds {opts.rounds}" if opts.rounds else "in the project"
    if not judgments.exists():
        raise ExportError(
            f"no comparisons match: no comparison {where} has a judgment yet",
            field="rounds" if opts.rounds else None,
        )
    if opts.pools:
        judgments = judgments.filter(pool_id__in=opts.pools)
        if not judgments.exists():
            names = list(Pool.objects.filter(pk__in=opts.pools).values_list("name", flat=True))
            raise ExportError(
                f"no comparisons match: pools={names} have no judgments on the comparisons {where}",
                field="pools",
            )
    if not opts.include_excluded:
        excluded = Membership.objects.filter(project=project, excluded=True).values("user_id")
        if not judgments.exclude(annotator_id__in=excluded).exists():
            raise ExportError(
                "no comparisons match: every remaining judgment is by an excluded annotator "
                "(include_excluded is off)",
                field="include_excluded",
            )
