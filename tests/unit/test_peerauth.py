"""Request signatures of the node file service: what is accepted and what is refused."""

from __future__ import annotations

import pytest

from fsd.peerauth import WINDOW_S, Refused, RequestGuard, Signer

TOKEN = "cluster-token-" + "x" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_signed_request_is_accepted_once() -> None:
    clock = Clock()
    guard = RequestGuard(TOKEN, clock=clock)
    header = Signer(TOKEN, clock=clock).header("GET", "/v1/entries/d", "d")
    guard.check("GET", "/v1/entries/d", "d", header)
    with pytest.raises(Refused):  # the same header again is a replay
        guard.check("GET", "/v1/entries/d", "d", header)


@pytest.mark.parametrize(
    ("method", "path", "subject"),
    [("PUT", "/v1/entries/d", "d"), ("GET", "/v1/entries/e", "d"), ("GET", "/v1/entries/d", "e")],
)
def test_a_signature_covers_method_path_and_subject(method: str, path: str, subject: str) -> None:
    clock = Clock()
    header = Signer(TOKEN, clock=clock).header("GET", "/v1/entries/d", "d")
    with pytest.raises(Refused):
        RequestGuard(TOKEN, clock=clock).check(method, path, subject, header)


def test_another_token_stale_or_future_stamps_and_junk_are_refused() -> None:
    clock = Clock()
    guard = RequestGuard(TOKEN, clock=clock)
    wrong = Signer("another-token-" + "y" * 20, clock=clock).header("GET", "/p")
    old_clock = Clock()
    old_clock.now -= WINDOW_S + 1
    stale = Signer(TOKEN, clock=old_clock).header("GET", "/p")
    future_clock = Clock()
    future_clock.now += WINDOW_S + 1
    future = Signer(TOKEN, clock=future_clock).header("GET", "/p")
    good = Signer(TOKEN, clock=clock).header("GET", "/p")
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    for header in [
        None,
        "",
        wrong,
        stale,
        future,
        tampered,
        "v1 1 2 3",
        "v2" + good[2:],
        good.replace(" ", "  "),
        good + "\udcff",
        "v1 " + "9" * 40 + " abcdefgh " + "0" * 64,
    ]:
        with pytest.raises(Refused):
            guard.check("GET", "/p", "-", header)
    guard.check("GET", "/p", "-", good)  # the refusals did not spoil a good one


def test_nonces_are_forgotten_once_their_stamp_left_the_window() -> None:
    clock = Clock()
    guard = RequestGuard(TOKEN, clock=clock)
    signer = Signer(TOKEN, clock=clock)
    for _ in range(2000):
        guard.check("GET", "/p", "-", signer.header("GET", "/p"))
    clock.now += WINDOW_S + 5
    guard.check("GET", "/p", "-", signer.header("GET", "/p"))
    assert len(guard._seen) == 1


def test_the_token_is_not_in_any_representation() -> None:
    assert TOKEN not in repr(Signer(TOKEN)) + repr(RequestGuard(TOKEN))
    assert TOKEN not in Signer(TOKEN).header("GET", "/p")
