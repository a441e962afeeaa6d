"""The synthetic `arith` task: split, verifier, and the imperfect teacher (`task.slip_rate`)."""
from __future__ import annotations

import pytest

from lco_cli.config import DataConfig
from lco_cli.data.sft import sft_pairs
from lco_cli.tasks import ArithTask, carry_slip


@pytest.mark.parametrize("a,b,slip", [
    (57, 68, 15),    # 7+8 -> 5 (carry dropped), 5+6 -> 1 (carry dropped)
    (19, 1, 10),     # 9+1 -> 0, 1+0 -> 1
    (50, 50, 0),     # every column overflows to 0
    (12, 34, 46),    # no carry: the slip is the right answer
    (999, 1, 990),
])
def test_carry_slip_by_hand(a, b, slip):
    assert carry_slip(a, b) == slip


def test_split_is_disjoint_seeded_and_checked_exactly():
    t, same, other = ArithTask("add", 2, 100, seed=0), ArithTask("add", 2, 100, seed=0), ArithTask("add", 2, 100, seed=1)
    assert len(t.test) == 100 and len(t.train) == 90 * 90 - 100
    assert not {e.id for e in t.test} & {e.id for e in t.train}
    assert [e.id for e in t.test] == [e.id for e in same.test] != [e.id for e in other.test]
    ex = t.test[0]
    assert ex.prompt == ex.id + "=" and int(ex.answer) == sum(map(int, ex.id.split("+")))
    assert t.check(ex, ex.answer) == (ex.answer, True)
    assert t.check(ex, ex.answer + "0")[1] is False and t.check(ex, "")[1] is False


def test_slip_rate_corrupts_only_the_demonstrations():
    clean, slipped = ArithTask("add", 2, 400, seed=0), ArithTask("add", 2, 400, seed=0, slip_rate=0.6)
    assert [e.id for e in clean.train] == [e.id for e in slipped.train]          # same split
    assert [e.answer for e in clean.train] == [e.answer for e in slipped.train]  # verifier truth untouched
    assert all(e.demo == e.answer for e in clean.train + clean.test + slipped.test)
    changed = [e for e in slipped.train if e.demo != e.answer]
    with_carry = [e for e in slipped.train if str(carry_slip(*map(int, e.id.split("+")))) != e.answer]
    for e in changed:
        assert e.demo == str(carry_slip(*map(int, e.id.split("+"))))
        assert slipped.check(e, e.demo)[1] is False  # a slip is wrong by the verifier
    # Every carry problem is slipped with probability 0.6 (seeded): 0.6 ± 3σ of the binomial.
    frac = len(changed) / len(with_carry)
    assert abs(frac - 0.6) < 3 * (0.6 * 0.4 / len(with_carry)) ** 0.5
    assert [e.demo for e in slipped.train] == [e.demo for e in ArithTask("add", 2, 400, seed=0, slip_rate=0.6).train]


def test_sft_pairs_use_the_demonstration():
    task = ArithTask("add", 2, 400, seed=0, slip_rate=1.0)
    pairs = sft_pairs(DataConfig(), None, task)
    assert [p.response for p in pairs] == [e.demo for e in task.train]
    assert any(p.response != e.answer for p, e in zip(pairs, task.train))


def test_slip_needs_addition():
    with pytest.raises(ValueError, match="addition"):
        ArithTask("mul", 2, 400, seed=0, slip_rate=0.5)
