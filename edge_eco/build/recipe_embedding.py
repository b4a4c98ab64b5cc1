"""The tables of an embedding-head recipe (``[bundle] kind = "embedding-head"``): one sentence-embedding
encoder (a BERT-family model from a pip package of weights) with a linear head over every label, in one
int8 ONNX file, served as its own bundle (the remote generalist). Pure; used by
:mod:`edge_eco.build.recipe`, which reads the tables every recipe shares (``[bundle]``, ``[data]``,
``[split]``, ``[card]``) and passes them in.

::

    [encoder]       package (pip distribution holding the weights), name, licence, source,
                    max_tokens, batch, opset
    [quantization]  weights = "dynamic-uint8-per-channel"
    [head]          c_grid, max_iter, tol, max_train_rows, source
    [calibration]   split = "val", reject_floor
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RecipeError

if TYPE_CHECKING:
    from .recipe import CardSpec, DataSpec, SplitSpec

EMBEDDING_QUANTIZATIONS = ("dynamic-uint8-per-channel",)
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class EncoderSpec:
    """The sentence encoder: the weights come from the pip distribution ``package`` (its import module,
    the name with ``-`` as ``_``, has ``get_model_path()``), read offline. ``name`` and ``licence``
    are the upstream model's, for the card; ``source`` is the card's paragraph about the weights."""

    package: str
    name: str
    licence: str
    source: str = ""
    max_tokens: int = 128
    batch: int = 64  # embedding batch at build time (batches of similar length, dynamic padding)
    opset: int = 17

    @property
    def module(self) -> str:
        """The import name of ``package``."""
        return self.package.replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class HeadSpec:
    """The linear head: multinomial logistic regression on the int8 embeddings, ``C`` picked on val."""

    c_grid: tuple[float, ...] = (4.0, 16.0, 64.0, 256.0)
    max_iter: int = 3000
    tol: float = 1e-6
    max_train_rows: int = 0  # 0: every train row; else a seeded sample of that many (small test builds)
    source: str = ""  # what the head was trained on, for the ONNX metadata (``edge_eco.source``)


@dataclass(frozen=True)
class EmbeddingHeadRecipe:
    """A validated embedding-head recipe."""

    name: str
    version: str
    description: str
    reject_label: str
    seed: int
    data: "DataSpec"
    split: "SplitSpec"
    encoder: EncoderSpec
    head: HeadSpec
    quantization: str
    calibration_split: str
    reject_floor: bool
    card: "CardSpec"
    max_model_bytes: int = 0  # 0: no limit; else the build fails when the ONNX file is this big or bigger
    base_dir: Path = Path(".")


def _encoder(t) -> EncoderSpec:
    e = EncoderSpec(package=t.get("package", str), name=t.get("name", str), licence=t.get("licence", str),
                    source=t.get("source", str, ""), max_tokens=t.get("max_tokens", int, 128, 8, 512),
                    batch=t.get("batch", int, 64, 1, 4096), opset=t.get("opset", int, 17, 13, 21))
    t.done()
    if not _PACKAGE.fullmatch(e.package):
        raise RecipeError(f"encoder.package: {e.package!r} is not a pip distribution name")
    if not e.licence.strip():
        raise RecipeError("encoder.licence: the base model's licence must be stated")
    return e


def _head(t) -> HeadSpec:
    grid = t.get("c_grid", list, list(HeadSpec.c_grid))
    if not grid or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0
                           for c in grid):
        raise RecipeError(f"head.c_grid: a non-empty list of positive numbers, got {grid!r}")
    h = HeadSpec(c_grid=tuple(float(c) for c in grid), max_iter=t.get("max_iter", int, 3000, 1, 1_000_000),
                 tol=t.get("tol", float, 1e-6, 0.0, 1.0), max_train_rows=t.get("max_train_rows", int, 0, 0),
                 source=t.get("source", str, ""))
    t.done()
    return h


def parse_embedding_head(top, b, *, data: "DataSpec", split: "SplitSpec", card: "CardSpec",
                         base_dir: Path) -> EmbeddingHeadRecipe:
    """The rest of an embedding-head recipe, from the table readers of ``recipe._T``.

    Args:
        top: the whole recipe; b: its ``[bundle]`` (``kind`` already read); data, split, card: the
        shared tables, parsed; base_dir: the repository root.

    Raises:
        RecipeError: a missing or unknown field, a wrong type or a value out of range, or a table that
        belongs to ecology recipes (``[specialists]``, ``[router]``, ...).
    """
    encoder = _encoder(top.table("encoder", required=True))
    q = top.table("quantization")
    quant = q.choice("weights", EMBEDDING_QUANTIZATIONS, EMBEDDING_QUANTIZATIONS[0])
    q.done()
    head = _head(top.table("head"))
    c = top.table("calibration")
    cal_split = c.choice("split", ("val",), "val")
    reject_floor = c.get("reject_floor", bool, True)
    c.done()
    recipe = EmbeddingHeadRecipe(
        name=b.get("name", str), version=b.get("version", str, "1"), description=b.get("description", str, ""),
        reject_label=b.get("reject_label", str, "oos"), seed=b.get("seed", int, 0, 0), data=data, split=split,
        encoder=encoder, head=head, quantization=quant, calibration_split=cal_split, reject_floor=reject_floor,
        card=card, max_model_bytes=b.get("max_model_bytes", int, 0, 0), base_dir=base_dir)
    b.done()
    top.done()  # [specialists], [router], [featurizer], ... are ecology tables: unknown here
    return recipe
