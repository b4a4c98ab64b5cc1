"""The request path on a tiny fake-backend ecology: direct, coalition, decline, remote, offline."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import edge_eco
from edge_eco.errors import RequestError
from edge_eco.fallback import RemoteAnswer
from edge_eco.manifest import Policy
from edge_eco.router import Route
from edge_eco.serve import InferenceServer

from conftest import make_fake_ecology


class RecordingRemote:
    """A remote client double that records what would have been sent."""

    def __init__(self, label: str = "transfer", confidence: float = 0.97, error: Exception | None = None):
        self.sent: list[str] = []
        self.label, self.confidence, self.error = label, confidence, error

    def infer(self, texts, *, timeout_s=None):
        self.sent.extend(texts)
        if self.error:
            raise self.error
        return [RemoteAnswer(self.label, self.confidence, "stub", "1", 0.1) for _ in texts]

    def close(self):
        pass


def test_confident_route_answers_directly(fake_ecology):
    with edge_eco.open(fake_ecology) as eco:
        a = eco.answer("what is my account balance")
    assert (a.label, a.path) == ("balance", "direct")
    assert a.confidence > 0.9
    assert a.provenance["route"]["candidates"][0] == "money"
    assert set(a.provenance["latency_us"]) == {"route", "local", "total"}


def test_unsure_route_runs_a_coalition_and_the_judge_picks(fake_ecology):
    with edge_eco.open(fake_ecology) as eco:
        eco.policy = Policy(direct_threshold=1.0, fallback_threshold=0.0)
        a = eco.answer("book a flight to paris")
    assert a.path == "coalition"
    assert a.label == "book_flight"
    assert len(a.provenance["votes"]) == 2


def test_declining_direct_specialist_widens_to_coalition(fake_ecology):
    with edge_eco.open(fake_ecology) as eco:
        eco.policy = Policy(direct_threshold=0.5, fallback_threshold=0.0)
        # A confident but wrong route: travel first. Travel declines a money query.
        real = eco._featurize_route
        eco._featurize_route = lambda data, *rest: (real(data, *rest)[0], Route((1, 0, 2), (0.95, 0.04, 0.01)))
        a = eco.answer("transfer money to savings")
    assert a.path == "coalition"
    assert a.label == "transfer"
    assert a.provenance["votes"][0][0] == "travel" and a.provenance["votes"][0][3] is True


def test_low_confidence_goes_remote_and_remote_label_is_used(fake_ecology):
    remote = RecordingRemote()
    with edge_eco.open(fake_ecology, remote_client=remote) as eco:
        eco.policy = Policy(direct_threshold=0.6, fallback_threshold=0.999999)
        a = eco.answer("zzz qqq")
    assert remote.sent == ["zzz qqq"]
    assert (a.label, a.path) == ("transfer", "remote")


def test_local_only_never_reaches_the_remote(fake_ecology):
    remote = RecordingRemote()
    with edge_eco.open(fake_ecology, remote_client=remote) as eco:
        eco.policy = Policy(fallback_threshold=0.999999)
        a = eco.answer("zzz qqq", local_only=True)
    assert remote.sent == []
    assert a.path in ("direct", "coalition")
    assert a.provenance["remote"] == {"skipped": "local_only"}


def test_forbidden_remote_policy_is_obeyed(tmp_path):
    folder = make_fake_ecology(tmp_path / "eco", remote="forbidden",
                               policy=Policy(direct_threshold=0.6, fallback_threshold=0.999999))
    remote = RecordingRemote()
    with edge_eco.open(folder, remote_client=remote) as eco:
        a = eco.answer("zzz qqq")
    assert remote.sent == []
    assert a.provenance["remote"] == {"skipped": "policy forbids remote"}


def test_remote_label_outside_label_set_is_a_failed_call(fake_ecology):
    remote = RecordingRemote(label="launch_rocket")
    with edge_eco.open(fake_ecology, remote_client=remote) as eco:
        eco.policy = Policy(fallback_threshold=0.999999)
        a = eco.answer("zzz qqq")
    assert a.path == "unavailable"
    assert "not in the label set" in a.provenance["remote"]["error"]
    assert a.label in eco.labels


def test_offline_answers_locally_with_unavailable_path(fake_ecology):
    with edge_eco.open(fake_ecology, remote_url="http://127.0.0.1:9") as eco:  # discard port: refused
        eco.policy = Policy(fallback_threshold=0.999999)
        a = eco.answer("zzz qqq", deadline_ms=500)
    assert a.path == "unavailable"
    assert a.provenance["remote"]["error"].startswith("RemoteUnavailable")


def test_no_remote_configured_is_unavailable_not_an_exception(fake_ecology):
    with edge_eco.open(fake_ecology) as eco:
        eco.policy = Policy(fallback_threshold=0.999999)
        a = eco.answer("zzz qqq")
    assert a.path == "unavailable"
    assert "no remote" in a.provenance["remote"]["error"]


def test_remote_over_real_v2_server_on_loopback(tmp_path):
    """One edge_eco serves another: the fallback crosses a real socket."""
    served = make_fake_ecology(tmp_path / "served")
    client_eco = make_fake_ecology(tmp_path / "client")
    with edge_eco.open(served) as hub, InferenceServer(hub).start() as server:
        with edge_eco.open(client_eco, remote_url=server.url + "/v2/models/fake") as eco:
            eco.policy = Policy(fallback_threshold=0.999999)
            a = eco.answer("transfer money to savings please")
    assert a.path == "remote"
    assert a.label == "transfer"
    assert a.provenance["remote"]["model"] == "fake"


@pytest.mark.parametrize("bad, message", [
    ("", "empty"), ("   \n", "empty"), ("x" * (1 << 20), "limit is 16384"),
    (b"\xff\xfe broken", "not valid UTF-8"), (None, "must be str or bytes")])
def test_bad_texts_get_clear_errors(fake_ecology, bad, message):
    with edge_eco.open(fake_ecology) as eco:
        with pytest.raises(RequestError, match=message):
            eco.answer(bad)


def test_concurrent_answers_equal_sequential(fake_ecology):
    texts = ["what is my account balance", "book a flight to paris", "set an alarm for six",
             "transfer money to savings", "tell me a joke about the weather"] * 20
    with edge_eco.open(fake_ecology) as eco:
        expected = [(a.label, a.path) for a in map(eco.answer, texts)]
        with ThreadPoolExecutor(8) as pool:
            got = [(a.label, a.path) for a in pool.map(eco.answer, texts)]
    assert got == expected


def test_budget_forces_evictions_but_answers_stay_right(fake_ecology, monkeypatch):
    # Footprints read as unchanged, so each model is charged its prediction: the fake models'
    # real growth is a few kB, and after a test that warmed the heap two of them fit the budget
    # (0 evictions when test_residency*.py ran first in the same process).
    from edge_eco import ecology as ecology_mod
    from edge_eco.residency.footprint import Footprint
    monkeypatch.setattr(ecology_mod, "read_footprint", lambda: Footprint(50_000_000, 10_000_000))
    with pytest.raises(edge_eco.ResidencyError, match="budget of 1 bytes cannot hold it"):
        edge_eco.open(fake_ecology, budget_bytes=1)
    for bad in (-1, 1.5, "abc", True):
        with pytest.raises(edge_eco.ManifestError, match="budget_bytes must be a non-negative integer"):
            edge_eco.open(fake_ecology, budget_bytes=bad)
    with edge_eco.open(fake_ecology) as eco:
        size = max(eco._predict_bytes(m) for m in ("money", "travel", "generalist"))
    with edge_eco.open(fake_ecology, budget_bytes=size + 1) as eco:
        labels = [eco.answer(t, local_only=True).label for t in
                  ["what is my account balance", "book a flight to paris"] * 3]
        assert labels == ["balance", "book_flight"] * 3
        assert eco.stats()["evictions"] >= 5
        assert eco.residency.resident_bytes <= size + 1


def test_closed_ecology_refuses(fake_ecology):
    eco = edge_eco.open(fake_ecology)
    eco.close()
    eco.close()  # idempotent
    with pytest.raises(edge_eco.EdgeEcoError, match="closed"):
        eco.answer("hello")


def test_threads_do_not_leak(fake_ecology):
    before = threading.active_count()
    for _ in range(3):
        with edge_eco.open(fake_ecology) as eco:
            eco.policy = Policy(direct_threshold=1.0, fallback_threshold=0.0)
            eco.answer("book a flight")
    assert threading.active_count() <= before + 1


@pytest.mark.parametrize("kwargs, message", [
    ({"deadline_ms": 0}, "deadline_ms must be a positive number"),
    ({"deadline_ms": -5}, "deadline_ms must be a positive number"),
    ({"deadline_ms": float("nan")}, "deadline_ms must be a positive number"),
    ({"deadline_ms": "200"}, "deadline_ms must be a positive number"),
    ({"deadline_ms": True}, "deadline_ms must be a positive number"),
    ({"deadline_ms": 10 ** 400}, "deadline_ms must be a positive number"),  # was an OverflowError
    ({"local_only": "no"}, "local_only must be True or False"),
])
def test_bad_options_are_request_errors(fake_ecology, kwargs, message):
    with edge_eco.open(fake_ecology) as eco:
        with pytest.raises(RequestError, match=message):
            eco.answer("what is my account balance", **kwargs)


def test_a_numpy_deadline_is_a_number_and_a_numpy_bool_or_nan_is_not(fake_ecology):
    """A trial's eco.answer(text, deadline_ms=np.float32(100)) was refused as not a positive number."""
    import numpy as np

    with edge_eco.open(fake_ecology) as eco:
        for deadline in (np.float32(100), np.float64(250.5), np.int64(100), np.uint16(80)):
            assert eco.answer("what is my account balance", deadline_ms=deadline).label == "balance"
        for bad in (np.float32("nan"), np.float32("inf"), np.float64("inf"), np.float32(0), np.int64(-5), np.bool_(True)):
            with pytest.raises(RequestError) as err:
                eco.answer("what is my account balance", deadline_ms=bad)
            assert str(err.value) == f"deadline_ms must be a positive number of milliseconds or None, got {bad!r}"


@pytest.mark.parametrize("text", ["?!...,;:--", "\x00\x00", "~ ~ ~"])
def test_text_without_any_word_is_the_reject_label_or_goes_remote(fake_ecology, text):
    with edge_eco.open(fake_ecology) as eco:
        a = eco.answer(text, local_only=True)
        assert (a.label, a.confidence) == ("oos", 0.0)
        assert a.provenance["no_features"] is True
        remote = RecordingRemote(label="balance")
        eco._remote = remote
        assert eco.answer(text).path == "remote" and remote.sent == [text]


def test_close_waits_for_answers_in_flight(fake_ecology):
    """A request running when close() is called finishes with its answer, not an error."""
    import time as _time
    eco = edge_eco.open(fake_ecology)
    slow = RecordingRemote()
    real_infer = slow.infer

    def infer(texts, *, timeout_s=None):
        _time.sleep(0.3)
        return real_infer(texts, timeout_s=timeout_s)
    slow.infer = infer
    eco._remote = slow
    eco.policy = Policy(fallback_threshold=0.999999)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("a", eco.answer("zzz qqq")))
    t.start()
    _time.sleep(0.1)
    eco.close()
    t.join()
    assert result["a"].path == "remote"
    with pytest.raises(edge_eco.EdgeEcoError, match="closed"):
        eco.answer("hello")


def test_a_coalition_member_that_cannot_load_is_named_and_cannot_back_the_reject_label(tmp_path):
    # money runs in the request's thread, travel in the pool: travel's load error is recorded by
    # model (was only a string in coalition_dropped), and money's lone "not mine" no longer makes
    # the answer oos at money's confidence: travel's niche is unknown, the generalist's answer stands.
    from edge_eco.bundle import sha256_file

    folder = make_fake_ecology(tmp_path / "fake", policy=Policy(direct_threshold=0.6, fallback_threshold=0.5))
    old = sha256_file(folder / "travel.npz")
    (folder / "travel.npz").write_bytes(b"not a zip")
    toml = folder / "ecology.toml"
    toml.write_text(toml.read_text().replace(old, sha256_file(folder / "travel.npz")))
    remote = RecordingRemote(label="balance")
    with edge_eco.open(folder, remote_client=remote) as eco:
        offline = eco.answer("money flight alarm balance", local_only=True)
        online = eco.answer("money flight alarm balance")
    assert offline.provenance["route"]["candidates"] == ["money", "travel"]
    assert "ModelLoadError" in offline.provenance["model_errors"]["travel"]
    assert "coalition_dropped" not in offline.provenance
    assert ("money", "oos", True) in [(v[0], v[1], v[3]) for v in offline.provenance["votes"]]
    assert (offline.label, offline.path) == ("balance", "coalition") and offline.confidence < 0.5
    assert (online.label, online.path) == ("balance", "remote") and remote.sent == ["money flight alarm balance"]


def test_a_generalist_above_the_requests_risk_is_not_asked_when_every_specialist_declines(tmp_path):
    # The judge's "every specialist said not mine" step asked the local generalist without the
    # request's max_risk check that routing applies (found in review).
    folder = make_fake_ecology(tmp_path / "fake", policy=Policy(direct_threshold=0.6, fallback_threshold=0.0))
    toml = folder / "ecology.toml"
    text = toml.read_text()
    at = text.rindex('risk = "low"')  # the last model's: the generalist
    toml.write_text(text[:at] + 'risk = "high"' + text[at + len('risk = "low"'):])
    with edge_eco.open(folder) as eco:
        a = eco.answer("flight alarm account transfer", local_only=True)  # both specialists decline
    asked = [v[0] for v in a.provenance["votes"]]
    assert asked and "generalist" not in asked and "generalist" not in a.provenance["models"]
    assert all(v[3] for v in a.provenance["votes"]) and a.label == "oos"
