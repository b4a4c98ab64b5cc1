"""The public surface is small and deliberate; changing it is a decision, not an accident."""

import edge_eco


def test_public_names_are_locked():
    assert sorted(edge_eco.__all__) == sorted([
        "Answer", "BackendError", "Ecology", "EdgeEcoError", "FallbackError", "IntegrityError",
        "ManifestError", "RequestError", "ResidencyError", "open", "__version__"])
    for name in edge_eco.__all__:
        assert hasattr(edge_eco, name)


def test_validation_errors_are_value_errors():
    assert issubclass(edge_eco.ManifestError, ValueError)
    assert issubclass(edge_eco.IntegrityError, edge_eco.ManifestError)
    assert issubclass(edge_eco.RequestError, ValueError)
    for cls in (edge_eco.ManifestError, edge_eco.RequestError, edge_eco.BackendError, edge_eco.FallbackError,
                edge_eco.ResidencyError):
        assert issubclass(cls, edge_eco.EdgeEcoError)


def test_only_the_adapters_import_foreign_runtimes():
    """STYLE: only backends/ort.py imports onnxruntime; only _native imports the extension."""
    from pathlib import Path
    pkg = Path(edge_eco.__file__).parent
    for py in pkg.rglob("*.py"):
        text = py.read_text()
        rel = py.relative_to(pkg).as_posix()
        if rel != "backends/ort.py":
            assert "import onnxruntime" not in text, rel
        if rel != "_native.py":
            assert "_edge_eco_native" not in text, rel
        if rel != "tokens.py":
            assert "import tokenizers" not in text and "from tokenizers" not in text, rel
        if rel != "store.py":  # the outcome store is the only sqlite3 user
            assert "import sqlite3" not in text, rel
