"""The autoheal policy (images/autoheal/tide_autoheal/policy.py): time is
passed in as plain seconds, so crash loops of hours run here in no time."""

from __future__ import annotations

import itertools

import pytest

from tide_autoheal.actions import Action, Note, Recheck, Restart, RestartDependents
from tide_autoheal.policy import Policy, Settings, backoff_delay, parse_depends_on

FAST = Settings(
    backoff_base=10,
    backoff_factor=2,
    backoff_max=40,
    max_restarts=6,
    window=1000,
    healthy_reset=100,
)


def restarted(actions: list[Action]) -> list[str]:
    return [a.container for a in actions if isinstance(a, Restart)]


def notes(actions: list[Action], what: str) -> list[Note]:
    return [a for a in actions if isinstance(a, Note) and a.what == what]


def crash_loop(policy: Policy, name: str, until: float) -> list[float]:
    """Report `name` unhealthy a second after each restart (and whenever a
    deferred restart is rechecked), up to time `until`: when was it restarted?"""
    times: list[float] = []
    now = 0.0
    actions = policy.health(name, "unhealthy", True, now)
    while now <= until:
        if restarted(actions):
            times.append(now)
            now += 1
            actions = policy.health(name, "unhealthy", True, now)
        elif any(isinstance(a, Recheck) for a in actions):
            actions = policy.health(name, "unhealthy", True, now)
        else:
            due = policy.next_due()
            if due is None:
                break  # gave up: nothing will happen until it is healthy
            now = due
            actions = policy.tick(now)
    return times


def test_an_unhealthy_labelled_container_is_restarted_at_once() -> None:
    policy = Policy(FAST)
    assert policy.health("worker", "unhealthy", True, 0) == [Restart("worker", "unhealthy", 1)]


def test_without_the_label_or_while_healthy_nothing_is_restarted() -> None:
    policy = Policy(FAST)
    assert restarted(policy.health("other", "unhealthy", False, 0)) == []
    for status in ("starting", "healthy", "unknown"):
        assert restarted(policy.health("worker", status, True, 1)) == []
    assert policy.next_due() is None


def test_a_crash_loop_is_backed_off_exponentially_up_to_the_max() -> None:
    times = crash_loop(Policy(FAST), "worker", until=200)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [10, 20, 40, 40, 40]  # then the cap of 6 restarts stops it


def test_backoff_delay_is_none_first_then_grows_and_is_capped() -> None:
    assert [backoff_delay(FAST, n) for n in range(6)] == [0, 10, 20, 40, 40, 40]


def test_it_gives_up_after_the_cap_and_says_so_once() -> None:
    policy = Policy(FAST)
    times = crash_loop(policy, "worker", until=10_000)
    assert len(times) == FAST.max_restarts
    later = times[-1] + 500
    sweeps = [policy.health("worker", "unhealthy", True, later + i) for i in range(5)]
    assert all(actions == [] for actions in sweeps)  # the gave-up note came before, once
    assert policy.tick(later + 10) == []
    assert policy.next_due() is None


def test_the_gave_up_note_names_the_container_and_the_reason() -> None:
    policy = Policy(Settings(max_restarts=1, backoff_base=1, backoff_max=1))
    policy.health("worker", "unhealthy", True, 0)
    actions = policy.health("worker", "unhealthy", True, 5)
    assert [
        (n.container, "1 restarts within 3600s" in n.why) for n in notes(actions, "gave-up")
    ] == [("worker", True)]


def test_after_giving_up_it_resumes_when_healthy_with_the_backoff_kept() -> None:
    policy = Policy(FAST)
    times = crash_loop(policy, "worker", until=10_000)
    now = times[-1] + 100
    assert notes(policy.health("worker", "healthy", True, now), "resumed")
    # A fresh cap, but not a fresh start: the attempts (the backoff) go on.
    assert policy.health("worker", "unhealthy", True, now + 1) == [
        Restart("worker", "unhealthy", 7)
    ]
    policy.health("worker", "unhealthy", True, now + 2)
    assert policy.next_due() == now + 1 + FAST.backoff_max


def test_old_restarts_leave_the_window() -> None:
    settings = Settings(
        backoff_base=10, backoff_factor=1, backoff_max=10, max_restarts=2, window=50
    )
    early, late = Policy(settings), Policy(settings)
    for policy in (early, late):
        policy.health("w", "unhealthy", True, 0)  # restart 1
        policy.health("w", "unhealthy", True, 15)  # restart 2 (waited 10 s)
    assert notes(early.health("w", "unhealthy", True, 40), "gave-up")  # 2 within 50 s
    assert restarted(late.health("w", "unhealthy", True, 66)) == ["w"]  # both older than 50 s


def test_counts_reset_once_it_stays_healthy() -> None:
    policy = Policy(FAST)
    policy.health("w", "unhealthy", True, 0)
    policy.health("w", "unhealthy", True, 10)  # attempt 2
    policy.health("w", "healthy", True, 20)
    assert policy.tick(119) == []
    assert [n.container for n in notes(policy.tick(120), "reset")] == ["w"]
    assert policy.health("w", "unhealthy", True, 121) == [Restart("w", "unhealthy", 1)]


def test_a_short_healthy_spell_does_not_reset_the_backoff() -> None:
    policy = Policy(FAST)
    policy.health("w", "unhealthy", True, 0)
    policy.health("w", "healthy", True, 5)
    actions = policy.health("w", "unhealthy", True, 8)  # healthy for 3 s only
    assert restarted(actions) == []
    assert notes(actions, "deferred")
    assert policy.next_due() == 10


def test_a_deferred_restart_is_rechecked_first_and_dropped_if_healthy() -> None:
    policy = Policy(FAST)
    policy.health("w", "unhealthy", True, 0)
    policy.health("w", "unhealthy", True, 3)
    assert policy.tick(9) == []
    assert policy.tick(10) == [Recheck("w")]
    assert restarted(policy.health("w", "starting", True, 10)) == []
    assert policy.next_due() is None


def test_healthy_again_cancels_a_deferred_restart() -> None:
    policy = Policy(FAST)
    policy.health("w", "unhealthy", True, 0)
    policy.health("w", "unhealthy", True, 3)
    assert notes(policy.health("w", "healthy", True, 5), "cancelled")
    assert policy.next_due() is None
    assert policy.tick(10) == []


def test_a_stale_unhealthy_report_just_after_a_restart_does_not_restart_again() -> None:
    policy = Policy(FAST)
    assert restarted(policy.health("w", "unhealthy", True, 0)) == ["w"]
    assert restarted(policy.health("w", "unhealthy", True, 0.5)) == []


def test_a_dependency_that_recovers_from_unhealthy_restarts_its_dependents() -> None:
    policy = Policy(FAST)
    policy.health("cvmfs", "unhealthy", True, 0)
    policy.started("cvmfs", 1)
    actions = policy.health("cvmfs", "healthy", True, 30)
    assert RestartDependents("cvmfs") in actions
    candidates = [("worker", ("squid", "cvmfs")), ("web", ("squid",)), ("cvmfs", ("cvmfs",))]
    actions = policy.dependency_recovered("cvmfs", candidates, 30)
    assert actions == [Restart("worker", "dependency cvmfs recovered", 1)]


def test_a_restarted_dependency_without_the_label_counts_too() -> None:
    policy = Policy(FAST)
    policy.health("cvmfs", "healthy", False, 0)
    policy.started("cvmfs", 5)  # someone restarted it, or it was made anew
    policy.health("cvmfs", "starting", False, 5)
    assert RestartDependents("cvmfs") in policy.health("cvmfs", "healthy", False, 20)


def test_a_dependency_that_was_never_down_restarts_nothing() -> None:
    policy = Policy(FAST)
    for now in (0, 30, 60):  # the first sweep and later ones see it healthy
        actions = policy.health("cvmfs", "healthy", True, now)
        assert not any(isinstance(a, RestartDependents) for a in actions)


def test_one_recovery_restarts_dependents_once() -> None:
    policy = Policy(FAST)
    policy.health("cvmfs", "unhealthy", False, 0)
    first = policy.health("cvmfs", "healthy", False, 10)
    again = policy.health("cvmfs", "healthy", False, 40)  # a sweep sees it healthy still
    assert first.count(RestartDependents("cvmfs")) == 1
    assert RestartDependents("cvmfs") not in again


def test_dependent_restarts_are_backed_off_and_not_cancelled_by_its_own_health() -> None:
    policy = Policy(FAST)
    deps = [("worker", ("cvmfs",))]
    assert restarted(policy.dependency_recovered("cvmfs", deps, 0)) == ["worker"]
    actions = policy.dependency_recovered("cvmfs", deps, 3)  # the dependency flapped
    assert restarted(actions) == []
    assert notes(actions, "deferred")
    policy.health("worker", "healthy", True, 4)
    assert policy.tick(10) == [Restart("worker", "dependency cvmfs recovered", 2)]


def test_a_dependent_it_gave_up_on_is_skipped_and_that_is_logged() -> None:
    policy = Policy(Settings(max_restarts=1))
    policy.health("worker", "unhealthy", True, 0)
    policy.health("worker", "unhealthy", True, 100)  # gives up
    actions = policy.dependency_recovered("cvmfs", [("worker", ("cvmfs",))], 200)
    assert restarted(actions) == []
    assert [n.container for n in notes(actions, "skipped")] == ["worker"]


def test_a_removed_container_is_forgotten() -> None:
    policy = Policy(FAST)
    policy.health("w", "unhealthy", True, 0)
    policy.forget("w")
    assert policy.health("w", "unhealthy", True, 1) == [Restart("w", "unhealthy", 1)]


def test_depends_on_label_is_a_comma_separated_list_of_names() -> None:
    assert parse_depends_on(" cvmfs, squid ,,/other ") == ("cvmfs", "squid", "other")
    assert parse_depends_on("") == ()


@pytest.mark.parametrize(
    "bad",
    [
        {"backoff_base": 0},
        {"backoff_base": 20, "backoff_max": 10},
        {"backoff_factor": 0.5},
        {"max_restarts": 0},
        {"window": 0},
        {"healthy_reset": -1},
    ],
)
def test_settings_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Settings(**bad)  # type: ignore[arg-type]
