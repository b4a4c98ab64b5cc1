"""Build recipe (``recipes/*.toml``): parsing and validation into frozen dataclasses. Pure.

Every table and field is checked; an unknown field is an error, so a typo never silently falls
back to a default. The recipe declares where the data is and how it is read, the split, the
featurizer, the population (specialists per niche, a local generalist), quantization,
calibration, the router, the policy targeted at a remote-call budget, the optional remote
generalist and the model card's licence.

``[bundle] kind = "embedding-head"`` declares a different bundle: one sentence-embedding encoder with a
linear head, the serve-able remote generalist (its own tables: :mod:`edge_eco.build.recipe_embedding`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tomlread
from ..errors import RecipeError
from ..featurizer import FeaturizerSpec
from ..manifest import ManifestError
from .recipe_dense import DenseRecipe, WindowSpec, check_dense, mlp_settings, parse_dense, parse_windows
from .recipe_embedding import EmbeddingHeadRecipe, parse_embedding_head

KINDS = ("population", "embedding-head")  # [bundle] kind: an ecology, or one embedding + linear head model
FORMATS = ("jsonl", "csv", "tsv", "json-splits", "recordings")
SPLITS = ("train", "val", "test")
FAMILIES = ("sparse-linear", "mlp")  # sparse-linear: text (hashed n-grams, ONNX); mlp: dense vectors
QUANTIZATIONS = ("int8-per-class",)
REMOTE_RULES = ("cascade", "deferral")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def unsafe_id(model_id: object) -> bool:
    """Whether ``model_id`` cannot name a model and its files (``ID.onnx``): a safe id is 1-64 letters,
    digits, ``_``, ``-`` and ``.``, starts with a letter or digit and holds no ``..``. Pure."""
    return not isinstance(model_id, str) or not _SAFE_ID.fullmatch(model_id) or ".." in model_id


@dataclass(frozen=True)
class DataFile:
    """One input file. ``path`` is relative to the data folder and may hold ``{field}`` placeholders,
    which glob over folders and give every row that field (e.g. ``sib200/{language}/train.tsv``)."""

    path: str
    split: str | None = None
    keys: tuple[tuple[str, tuple[str, ...]], ...] = ()  # json-splits: split -> keys of [text, label] lists
    fields: tuple[tuple[str, str], ...] = ()  # constant fields every row of the file gets (e.g. language)


@dataclass(frozen=True)
class DataSpec:
    """How the labelled rows are read."""

    format: str
    files: tuple[DataFile, ...]
    text_field: str | None = "text"
    vector_field: str | None = None
    label_field: str = "label"
    niche_field: str | None = None
    niche_map: str | None = None  # JSON: {niche: [labels]} or {label: niche}
    split_field: str | None = None
    delimiter: str | None = None
    quoting: bool = True
    leakage: str = "error"  # the same text in train and test: "error", "warn" (on the card) or "drop"
    windows: WindowSpec | None = None  # format "recordings": how recordings are cut into windows


@dataclass(frozen=True)
class SplitSpec:
    """Given splits, or a seeded stratified split of the pooled rows."""

    mode: str = "given"  # "given", "stratified", or "by-recording" (whole files, per label, in name order)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    min_per_label: int = 3
    cycle: tuple[str, ...] = ("test", "val", "train", "train", "train")  # by-recording: split of file i


@dataclass(frozen=True)
class ModelFamily:
    """A model family and its training settings."""

    family: str = "sparse-linear"
    l2: float = 1e-5  # mlp: scikit-learn's alpha
    max_iter: int = 400
    tier: str = "small"
    hidden: tuple[int, ...] = ()  # mlp: hidden layer sizes
    learning_rate: float = 3e-3  # mlp: Adam's initial step
    backend: str = "ort"  # the written model: "ort" (ONNX) or, for mlp, "tflite"


@dataclass(frozen=True)
class SpecialistSpec:
    """One specialist per niche value (or per group of niche values)."""

    niche: str
    decline_label: str = "not_mine"
    balance_decline: bool = True
    max_decline_rows: int = 0  # 0: every other niche's row trains the decline label; else a seeded sample
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # specialist id -> niche values
    model: ModelFamily = ModelFamily()
    models: tuple[tuple[str, ModelFamily], ...] = ()  # specialist id -> its own family (e.g. a larger tier)

    def family(self, model_id: str) -> ModelFamily:
        """The model family of specialist ``model_id``."""
        return dict(self.models).get(model_id, self.model)


@dataclass(frozen=True)
class GeneralistSpec:
    """The local generalist over every label."""

    id: str = "generalist"
    reject_floor: bool = True
    model: ModelFamily = ModelFamily()


@dataclass(frozen=True)
class PolicySpec:
    """Thresholds: chosen on the calibration split to meet a remote-call budget."""

    target_remote_rate: float = 0.2
    remote_rule: str = "cascade"
    coalition_size: int = 2


@dataclass(frozen=True)
class RemoteSpec:
    """The remote generalist: where the runtime calls it, and its bundle to measure it in-process."""

    protocol: str = "v2"
    model: str = ""
    url: str = ""
    timeout_ms: float = 2000.0
    bundle: str | None = None  # relative to the recipe's folder's parent (the repository)


@dataclass(frozen=True)
class DeferralSpec:
    """Optional learned remote deferral (needs the remote bundle)."""

    enabled: bool = False
    l2: float = 3e-4
    max_iter: int = 300


@dataclass(frozen=True)
class CardSpec:
    """What the model card says about the data."""

    licence: str
    licence_file: str = ""  # relative to the data folder: a licence text the card must reproduce (BSD, MIT)
    source: str = ""
    attribution: str = ""
    limits: str = ""


@dataclass(frozen=True)
class CorrectnessSpec:
    """``[router] kind = "correctness"``: per-model correctness predictors (edge_eco.fitrouter),
    fitted on the calibration split's outcomes and stacked on the domain router."""

    lam: float = 0.0
    l2: float = 1e-3
    include_generalist: bool = False


CALIBRATION_METHODS = ("temperature", "temperature-reject-bias")


@dataclass(frozen=True)
class CalibrationSpec:
    """How models are calibrated on the calibration split.

    ``method``: ``temperature`` (one temperature per model, NLL) or ``temperature-reject-bias``
    (the generalist, whose labels include the reject label, also gets a bias on that label's
    logit, fitted jointly with its temperature; other models get a temperature).
    ``reject_share``: an optional declared share of the reject label in deployment traffic; the
    generalist's calibration rows are reweighted to it (label shift). None: the split as it is.
    """

    method: str = "temperature"
    reject_share: float | None = None


@dataclass(frozen=True)
class Recipe:
    """A validated build recipe."""

    name: str
    version: str
    description: str
    reject_label: str
    budget_bytes: int
    seed: int
    data: DataSpec
    split: SplitSpec
    featurizer: FeaturizerSpec
    quantization: str
    calibration_split: str
    specialists: SpecialistSpec
    generalist: GeneralistSpec
    router: ModelFamily
    policy: PolicySpec
    remote: RemoteSpec | None
    deferral: DeferralSpec
    card: CardSpec
    base_dir: Path = Path(".")
    correctness: CorrectnessSpec | None = None  # [router] kind = "correctness": fitted after the domain router
    calibration: CalibrationSpec = CalibrationSpec()
    dense: DenseRecipe | None = None  # vector data: the bundle's dense featurizer


class _T(tomlread.Table):
    """A recipe table read field by field (:class:`~edge_eco.tomlread.Table`, RecipeError); a
    missing sub-table reads as empty, and a choice may default to None."""

    error = RecipeError

    def choice(self, key: str, options: tuple[str, ...], default: Any = ...) -> str:
        v = self.get(key, str, default)
        if v is not None and v not in options:
            raise RecipeError(f"{self.where}.{key}: {v!r} is not one of {list(options)}")
        return v

    def table(self, key: str, required: bool = False) -> "_T":
        if required and key not in self.data:
            raise RecipeError(f"{self.where}: missing required table [{key}]")
        return _T(self.get(key, dict, {}), f"{self.where}.{key}" if self.where != "recipe" else key)

    def strings(self, key: str, default: Any = ()) -> tuple[str, ...]:
        v = self.get(key, list, list(default) if default is not ... else ...)
        if not all(isinstance(x, str) for x in v):
            raise RecipeError(f"{self.where}.{key}: expected a list of strings, got {v!r}")
        return tuple(v)


def _family(t: _T, default: str = "sparse-linear") -> ModelFamily:
    family = t.choice("family", FAMILIES, default)
    extra = mlp_settings(t) if family == "mlp" else {}
    m = ModelFamily(family=family, l2=t.get("l2", float, 1e-5, 0.0, 10.0),
                    max_iter=t.get("max_iter", int, 400, 1, 100000), tier=t.get("tier", str, "small"), **extra)
    t.done()
    return m


def _data(t: _T) -> DataSpec:
    fmt = t.choice("format", FORMATS)
    windows = parse_windows(t.table("windows", required=True)) if fmt == "recordings" else None
    files = []
    raw = t.get("files", list)
    if not raw:
        raise RecipeError("data.files: at least one file is needed")
    for i, item in enumerate(raw):
        f = _T(item, f"data.files[{i}]")
        keys = f.table("keys")
        key_pairs = tuple((s, keys.strings(s)) for s in SPLITS if s in keys.data)
        keys.used.update(SPLITS)
        keys.done()
        consts = f.table("fields")
        const_pairs = tuple((k, consts.get(k, str)) for k in sorted(consts.data))
        consts.done()
        files.append(DataFile(f.get("path", str), f.choice("split", SPLITS, None), key_pairs, const_pairs))
        f.done()
        if fmt == "json-splits" and not key_pairs:
            raise RecipeError(f"data.files[{i}]: format json-splits needs keys = {{train = [...], ...}}")
    dense_default = "vector_field" in t.data or fmt == "recordings"
    spec = DataSpec(format=fmt, files=tuple(files), text_field=t.get("text_field", str, None if dense_default else "text"),
                    vector_field=t.get("vector_field", str, "window" if fmt == "recordings" else None), label_field=t.get("label_field", str, "label"),
                    niche_field=t.get("niche_field", str, None), niche_map=t.get("niche_map", str, None),
                    split_field=t.get("split_field", str, None), delimiter=t.get("delimiter", str, None),
                    quoting=t.get("quoting", bool, True), leakage=t.choice("leakage", ("error", "warn", "drop"), "error"),
                    windows=windows)
    t.done()
    if spec.delimiter is not None and (len(spec.delimiter) != 1 or spec.delimiter in "\r\n\"" + chr(0)):
        raise RecipeError(f"data.delimiter: one character (not a quote or line break), got {spec.delimiter!r}")
    if (spec.text_field is None) == (spec.vector_field is None):
        raise RecipeError("data: give exactly one of text_field and vector_field")
    if fmt == "recordings" and spec.text_field is not None:
        raise RecipeError("data: format 'recordings' reads windows of numbers, not text (drop text_field)")
    if fmt == "json-splits" and spec.vector_field is not None:
        raise RecipeError("data: format 'json-splits' reads [text, label] pairs, not vectors")
    if spec.niche_map is not None and spec.niche_field is None:
        raise RecipeError("data.niche_map needs data.niche_field (the name of the niche it maps to)")
    return spec


def _split(s: _T, data: DataSpec) -> SplitSpec:
    split = SplitSpec(mode=s.choice("mode", ("given", "stratified", "by-recording"), "given"),
                      val_fraction=s.get("val_fraction", float, 0.15, 0.01, 0.5),
                      test_fraction=s.get("test_fraction", float, 0.15, 0.01, 0.5),
                      seed=s.get("seed", int, 0, 0), min_per_label=s.get("min_per_label", int, 3, 1),
                      cycle=s.strings("cycle", SplitSpec.cycle))
    if split.val_fraction + split.test_fraction >= 1.0:
        raise RecipeError(f"split: val_fraction + test_fraction = {split.val_fraction + split.test_fraction:g} "
                          "leaves no training rows; their sum must be below 1")
    if not split.cycle or not set(split.cycle) <= set(SPLITS) or set(split.cycle) != set(SPLITS):
        raise RecipeError(f"split.cycle: a list of splits naming each of {list(SPLITS)}, got {list(split.cycle)}")
    if split.mode == "by-recording" and data.format != "recordings":
        raise RecipeError("split.mode 'by-recording' splits whole recordings: it needs data.format = 'recordings'")
    if split.mode == "stratified" and data.format == "recordings":
        raise RecipeError("split.mode 'stratified' would put windows of one recording in train and test (leakage); "
                          "use mode = 'by-recording' or give each file's split")
    return split


def _card(t: _T) -> CardSpec:
    card = CardSpec(licence=t.get("licence", str), licence_file=t.get("licence_file", str, ""),
                    source=t.get("source", str, ""),
                    attribution=t.get("attribution", str, ""), limits=t.get("limits", str, ""))
    if not card.licence.strip():
        raise RecipeError("card.licence: the data's licence must be stated")
    return card


def parse_recipe(text: str, base_dir: Path = Path(".")) -> Recipe | EmbeddingHeadRecipe:
    """Parse and validate a recipe.

    Args:
        text: the recipe TOML.
        base_dir: the folder relative paths of the remote bundle are resolved against.

    Returns:
        A :class:`Recipe`, or an :class:`EmbeddingHeadRecipe` for ``[bundle] kind = "embedding-head"``.

    Raises:
        RecipeError: invalid TOML, a missing or unknown field, a wrong type or a value out of range.
    """
    try:
        top = _T(tomlread.loads(text), "recipe")
    except tomlread.TOMLDecodeError as exc:
        raise RecipeError(f"recipe is not valid TOML: {exc}") from exc
    b = top.table("bundle", required=True)
    kind = b.choice("kind", KINDS, "population")
    data = _data(top.table("data", required=True))
    s = top.table("split")
    split = _split(s, data)
    card_t = top.table("card", required=True)
    card = _card(card_t)
    if kind == "embedding-head":
        if data.text_field is None:
            raise RecipeError("bundle.kind 'embedding-head' embeds text: give data.text_field, not vectors")
        recipe = parse_embedding_head(top, b, data=data, split=split, card=card, base_dir=base_dir)
        for t in (s, card_t):
            t.done()
        return _check_bundle(recipe)
    f = top.table("featurizer")
    try:
        feat = FeaturizerSpec(**{k: f.get(k, int if k != "version" else str, getattr(FeaturizerSpec(), k))
                                 for k in FeaturizerSpec.__dataclass_fields__})
    except ManifestError as exc:
        raise RecipeError(f"featurizer: {exc}") from exc
    q = top.table("quantization")
    quant = q.choice("weights", QUANTIZATIONS, "int8-per-class")
    c = top.table("calibration")
    cal_split = c.choice("split", ("val",), "val")
    calibration = CalibrationSpec(c.choice("method", CALIBRATION_METHODS, "temperature"),
                                  c.get("reject_share", float, None, 0.001, 0.999))
    sp_t = top.table("specialists", required=True)
    groups_t = sp_t.table("groups")
    groups = tuple((g, groups_t.strings(g, ...)) for g in sorted(groups_t.data))
    groups_t.done()
    for gid, values in groups:
        if unsafe_id(gid):
            raise RecipeError(f"specialists.groups: {gid!r} cannot name a model (1-64 letters, digits, _ - .)")
        if not values or not all(v.strip() for v in values):
            raise RecipeError(f"specialists.groups.{gid}: give a non-empty list of non-empty niche values")
    dense_data = data.vector_field is not None
    family = "mlp" if dense_data else "sparse-linear"
    spec_model = _family(sp_t.table("model"), family)
    models_t = sp_t.table("models")
    own_models = tuple((k, _family(models_t.table(k), family)) for k in sorted(models_t.data))
    models_t.done()
    unknown = [k for k, _ in own_models if k not in dict(groups)]
    if unknown:
        raise RecipeError(f"specialists.models: {unknown} are not specialists of [specialists.groups]")
    specialists = SpecialistSpec(niche=sp_t.get("niche", str), decline_label=sp_t.get("decline_label", str, "not_mine"),
                                 balance_decline=sp_t.get("balance_decline", bool, True), groups=groups,
                                 max_decline_rows=sp_t.get("max_decline_rows", int, 0, 0),
                                 model=spec_model, models=own_models)
    g = top.table("generalist")
    generalist = GeneralistSpec(id=g.get("id", str, "generalist"), reject_floor=g.get("reject_floor", bool, True),
                                model=_family(g.table("model"), family))
    if unsafe_id(generalist.id):
        raise RecipeError(f"generalist.id: {generalist.id!r} cannot name a model (1-64 letters, digits, _ - .)")
    r = top.table("router")
    correctness = None
    if r.choice("kind", ("linear-softmax", "correctness"), "linear-softmax") == "correctness":
        correctness = CorrectnessSpec(lam=r.get("lambda", float, 0.0, 0.0), l2=r.get("l2", float, 1e-3, 0.0),
                                      include_generalist=r.get("include_generalist", bool, False))
    router = _family(r.table("model"), "sparse-linear")
    p = top.table("policy")
    policy = PolicySpec(target_remote_rate=p.get("target_remote_rate", float, 0.2, 0.0, 1.0),
                        remote_rule=p.choice("remote_rule", REMOTE_RULES, "cascade"),
                        coalition_size=p.get("coalition_size", int, 2, 1, 16))
    remote = None
    if "remote" in top.data:
        rt = top.table("remote")
        remote = RemoteSpec(protocol=rt.choice("protocol", ("v2", "openai"), "v2"), model=rt.get("model", str, ""),
                            url=rt.get("url", str, ""), timeout_ms=rt.get("timeout_ms", float, 2000.0, 1.0),
                            bundle=rt.get("bundle", str, None))
        rt.done()
    d = top.table("deferral")
    deferral = DeferralSpec(enabled=d.get("enabled", bool, False), l2=d.get("l2", float, 3e-4, 0.0),
                            max_iter=d.get("max_iter", int, 300, 1))
    if (deferral.enabled or policy.remote_rule == "deferral") and (remote is None or remote.bundle is None):
        raise RecipeError("deferral needs [remote] bundle = ... (the remote generalist, run in-process)")
    dense = None
    if dense_data:
        dense = parse_dense(top.table("dense"), data.windows)
        check_dense(specialists, generalist, router, correctness, remote)
        if calibration != CalibrationSpec():
            raise RecipeError("[calibration] method/reject_share apply to text bundles; dense models are "
                              "calibrated by temperature only")
    elif "dense" in top.data:
        raise RecipeError("[dense] describes vector data: give data.vector_field (or format = 'recordings')")
    else:
        bad = [m for m in (spec_model, generalist.model) + tuple(f for _, f in own_models) if m.family != "sparse-linear"]
        if bad:
            raise RecipeError("model family 'mlp' takes dense vectors; text data trains 'sparse-linear' models")
    recipe = Recipe(name=b.get("name", str), version=b.get("version", str, "1"),
                    description=b.get("description", str, ""), reject_label=b.get("reject_label", str, "oos"),
                    budget_bytes=b.get("budget_bytes", int, 64 << 20, 0), seed=b.get("seed", int, 0, 0),
                    data=data, split=split, featurizer=feat, quantization=quant, calibration_split=cal_split,
                    specialists=specialists, generalist=generalist, router=router, policy=policy,
                    remote=remote, deferral=deferral, card=card, base_dir=base_dir, correctness=correctness,
                    calibration=calibration, dense=dense)
    for t in (top, b, s, f, q, c, sp_t, g, r, p, d, card_t):
        t.done()
    return _check_bundle(recipe)


def _check_bundle(recipe):
    """The checks every kind of recipe shares: a bundle name and a reject label."""
    if unsafe_id(recipe.name):  # it names the bundle, the v2 model and path segments
        raise RecipeError(f"bundle.name: {recipe.name!r} cannot name a bundle (1-64 letters, digits, _ - ., "
                          "starting with a letter or digit, no '..')")
    if not recipe.reject_label.strip():
        raise RecipeError("bundle.reject_label: must not be empty (the label of out-of-scope requests, e.g. 'oos')")
    return recipe


def load_recipe(path: str | Path) -> Recipe | EmbeddingHeadRecipe:
    """Read and parse a recipe file; relative bundle paths resolve against the repository root
    (the recipe folder's parent).

    Raises:
        RecipeError: unreadable file or invalid recipe.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    return parse_recipe(text, path.resolve().parent.parent)
