"""Commands given the other kind of bundle or requests (a sensor ecology where text is expected, or
windows for a text ecology) refuse in one line with rc 2 (a trial: `eval models/har --remote-bundle
models/minilm` and `fit-router models/har` raised TypeError tracebacks; `bench routing models/clinc150`
on the HAR windows reported 0.00 % everywhere with rc 0; `run models/clinc150` on them failed each
of the 380 requests)."""

from __future__ import annotations

import pytest

from edge_eco.cli import main

from conftest import DATA, MODELS

WINDOWS = "holds sensor windows; clinc150 takes text (give text requests, e.g. the CLINC150 json with --split)"


@pytest.mark.parametrize("argv, message", [
    (["eval", "{har}", "--requests", "{windows}", "--split", "test", "--remote-bundle", "{minilm}"],
     "--remote-bundle {minilm}: har answers windows of [52, 3] numbers (samples x axes), and a remote generalist "
     "answers text; score a sensor ecology without one"),
    (["fit-router", "{har}", "--requests", "{windows}", "--split", "val"],
     "{har}: fit-router fits a text ecology's router on its hashed features; har takes sensor windows (its router "
     "is rebuilt by `edge-eco build`)"),
    (["bench", "routing", "{clinc}", "--requests", "{windows}", "--split", "test", "--remote-bundle", "{minilm}"],
     "{windows} " + WINDOWS),
    (["run", "{clinc}", "--requests", "{windows}", "--split", "test"], "{windows} " + WINDOWS),
    (["eval", "{clinc}", "--requests", "{windows}", "--split", "test"], "{windows} " + WINDOWS),
])
def test_the_wrong_kind_is_refused_in_one_line(argv, message, capsys):
    names = {"har": MODELS / "har", "clinc": MODELS / "clinc150", "minilm": MODELS / "minilm",
             "windows": DATA / "stm32_har"}
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    verb = argv[0]
    assert capsys.readouterr().err == f"edge-eco {verb}: error: {message.format(**names)}\n"


def test_answer_features_names_what_it_takes():
    """A trial: answer_features("walk") said "got shape []", and a [52, 3] window (which answer()
    takes) "expected 156 features (52 samples x 3 axes), got shape [52, 3]"."""
    import numpy as np

    import edge_eco
    from edge_eco.errors import RequestError
    with edge_eco.open(MODELS / "har") as eco:
        window = np.zeros((52, 3), np.float32)
        with pytest.raises(RequestError) as err:
            eco.answer_features("walk")
        assert str(err.value) == "har takes a row of 156 numbers, not text"
        with pytest.raises(RequestError) as err:
            eco.answer_features(window)
        assert str(err.value) == ("expected a flat row of 156 features (52 samples x 3 axes, row-major), got shape "
                                  "[52, 3] (answer() takes the window as it is)")
        assert eco.answer_features(window.reshape(-1)).label == eco.answer(window).label
