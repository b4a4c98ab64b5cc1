"""Checks of a recipe against its data that need no training, run before any model is fitted (a
problem found after minutes of training wastes them). Reads nothing but whether the ``[remote]``
bundle exists."""

from __future__ import annotations

from pathlib import Path

from ..errors import BuildError
from ..manifest import Policy
from .data import Dataset
from .recipe import Recipe


def check_before_training(recipe: Recipe, data: Dataset, dense: tuple[int, float] | None = None) -> None:
    """Raise one BuildError listing every problem the build would otherwise meet after training.

    Args:
        recipe: the parsed recipe.
        data: its validated data.
        dense: for a dense-vector recipe, (feature count, the largest reading a request may hold).

    Raises:
        BuildError: a val/test text over the runtime's request limit, a missing ``[remote]`` bundle,
        a decline label that is also a real label, a memory budget below a model's int8 weights, a
        vector with a reading beyond the dense featurizer's ``max_abs`` (the runtime would refuse it).
    """
    problems = []
    limit = Policy().max_text_bytes
    long_rows = [r for r in data.val + data.test if r.text is not None and len(r.text.encode("utf-8")) > limit]
    if long_rows:
        problems.append(f"{len(long_rows)} val/test text(s) exceed the runtime's request limit of {limit} bytes "
                        f"(first: {', '.join(r.where for r in long_rows[:3])}); shorten or drop them")
    rem = recipe.remote
    if rem is not None and rem.bundle is not None:
        bundle = Path(recipe.base_dir) / rem.bundle
        if not (bundle / "ecology.toml").is_file():
            problems.append(f"[remote] bundle {bundle} is not an edge_eco bundle (no ecology.toml)")
    labels = {r.label for r in data.train}
    decline = recipe.specialists.decline_label
    if decline in labels:
        problems.append(f"specialists.decline_label {decline!r} is also a label of the data; choose another")
    if decline == recipe.reject_label:
        problems.append(f"specialists.decline_label equals bundle.reject_label {decline!r}; choose another")
    n_in = recipe.featurizer.dim if dense is None else dense[0]
    weights = n_in * len(labels)  # the generalist's int8 weights alone (a lower bound for an MLP)
    if recipe.budget_bytes and weights > recipe.budget_bytes:
        problems.append(f"bundle.budget_bytes {recipe.budget_bytes} is below the generalist's int8 weights alone "
                        f"({n_in} features x {len(labels)} labels = {weights} bytes); raise it "
                        "(0 = unlimited)")
    if dense is not None:
        over = [r for r in data.train + data.val + data.test if max(map(abs, r.vector)) > dense[1]]
        if over:
            problems.append(f"{len(over)} vector(s) hold a reading beyond dense.max_abs {dense[1]:g} (first: "
                            f"{', '.join(r.where for r in over[:3])}); the runtime refuses such requests: raise "
                            "max_abs to the sensor's range")
    if problems:
        raise BuildError("the recipe does not fit its data (nothing was trained):\n"
                         + "\n".join(f"- {p}" for p in problems))
