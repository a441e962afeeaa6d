"""Tests of lco_cli.evals.verify: box extraction, math-verify checks, and the hang-proof batch path."""
from __future__ import annotations

import importlib
import textwrap
import threading
import time

import pytest

from lco_cli.evals import verify as V
from lco_cli.evals.verify import VerifierPool, check_answer, extract_boxed, verify_batch

GIANT = r"The answer is \boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate it: hangs without a bound


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_pool():
    yield
    V.shutdown_pool()


# ---------------------------------------------------------------------------- extract_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),  # the last box wins
        (r"\boxed{\left(3, \frac{\pi}{2}\right)}", r"\left(3, \frac{\pi}{2}\right)"),
        (r"\boxed{x^{2^{3}} + {y}}", r"x^{2^{3}} + {y}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        (r"\fbox{42}", "42"),
        (r"\boxed {7}", "7"),
        (r"$\boxed 5$ done", "5"),  # legacy form
        (r"\boxed{}", ""),
        ("no box here", None),
        (r"\boxed{1} and a truncated \boxed{2", None),  # only the last box counts
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ---------------------------------------------------------------------------- check_answer


def test_fraction_equals_decimal_both_ways():
    assert check_answer(r"\frac{1}{2}", r"Thus \boxed{0.5}") == ("0.5", True)
    assert check_answer("0.5", r"Thus \boxed{\frac{1}{2}}") == (r"\frac{1}{2}", True)


def test_wrong_answer_is_false():
    assert check_answer("3", r"\boxed{4}") == ("4", False)
    assert check_answer(r"\frac{1}{2}", r"\boxed{\frac{1}{3}}") == (r"\frac{1}{3}", False)


@pytest.mark.parametrize(
    "gold, prediction",
    [
        (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}"),  # bare tuple gold
        ("3, 5, 7", r"\boxed{7, 5, 3}"),  # bare list gold (math-verify alone would read `7`)
        (r"\boxed{12}", r"\boxed{12}"),  # gold already boxed
        (r"\text{(C)}", r"\boxed{C}"),
        (r"\$32,348", r"\boxed{32348}"),
        ("27", r"\fbox{27}"),
    ],
)
def test_gold_forms(gold, prediction):
    assert check_answer(gold, prediction)[1] is True


def test_no_box_falls_back_to_math_verify_on_whole_text():
    # Documented fallback: math-verify parses the whole text (last `$...$` / number), and the
    # extracted answer is the string it matched.
    assert check_answer("7", "After simplifying, the answer is 7.") == ("7", True)
    assert check_answer("7", "The result is $8$.") == ("8", False)
    assert check_answer("7", "I do not know.") == (None, False)


def test_empty_or_unparsable_is_false():
    assert check_answer("1", r"\boxed{}") == ("", False)
    assert check_answer("", r"\boxed{1}") == ("1", False)


def test_check_answer_off_main_thread():
    # math-verify's signal timeouts raise ValueError off the main thread; we disable them there.
    out = []
    thread = threading.Thread(target=lambda: out.append(check_answer("2", r"\boxed{2}")))
    thread.start()
    thread.join(30)
    assert out == [("2", True)]


def test_giant_expression_in_process_is_bounded_by_alarm():
    start = time.monotonic()
    assert verify_batch(["1"], [GIANT], timeout=1, workers=0) == [("9^{9^{9^{9}}}", False)]
    assert time.monotonic() - start < 4


# ---------------------------------------------------------------------------- verify_batch

MIXED = [
    (r"\frac{1}{2}", r"so \boxed{0.5}", ("0.5", True)),
    ("3", r"\boxed{4}", ("4", False)),
    ("7", "the answer is 7", ("7", True)),
    (r"\sqrt{2}", r"\boxed{\frac{2}{\sqrt{2}}}", (r"\frac{2}{\sqrt{2}}", True)),
    ("10", "no idea", (None, False)),
]


def test_batch_in_process_keeps_order():
    golds, preds, expected = zip(*MIXED)
    assert verify_batch(list(golds), list(preds), workers=0) == list(expected)


def test_batch_pool_keeps_order_and_matches_in_process():
    golds, preds, expected = zip(*(MIXED * 8))
    assert verify_batch(list(golds), list(preds), workers=2) == list(expected)


def test_batch_length_mismatch():
    with pytest.raises(ValueError):
        verify_batch(["1"], ["1", "2"])
    assert verify_batch([], []) == []


def test_giant_expression_does_not_hang_the_pool():
    verify_batch(["1"], [r"\boxed{1}"], workers=2)  # warm pool: time the check, not the start
    start = time.monotonic()
    result = verify_batch(["1", "2"], [GIANT, r"\boxed{2}"], timeout=1, workers=2)
    assert time.monotonic() - start < 2.5
    assert result == [("9^{9^{9^{9}}}", False), ("2", True)]


def test_batch_from_worker_thread_uses_pool():
    out = []
    thread = threading.Thread(target=lambda: out.append(verify_batch(["2"], [r"\boxed{2}"])))
    thread.start()
    thread.join(60)
    assert out == [[("2", True)]]


# ------------------------------------------------------- parent-side deadline and crash recovery

HELPER = """
import os, time

def check(gold, prediction, timeout):
    if prediction.startswith("HANG"):
        time.sleep(3600)  # no alarm is set: only the parent's deadline can end this
    if prediction == "CRASH":
        os._exit(3)
    if prediction == "RAISE":
        raise RuntimeError("broken check")
    return prediction, prediction == gold
"""


@pytest.fixture
def helper_check(tmp_path, monkeypatch):
    """A check function importable by the workers (they adopt the parent's sys.path)."""
    (tmp_path / "lco_verify_test_helper.py").write_text(textwrap.dedent(HELPER))
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("lco_verify_test_helper").check


def test_pool_kills_hung_and_crashed_checks(helper_check):
    pool = VerifierPool(2, check_fn=helper_check)
    try:
        pool.map(["a"], ["a"], timeout=5)  # start the workers
        preds = ["a", "HANG", r"x \boxed{9}", "CRASH", "RAISE", "b", "HANG", "c"]
        golds = ["a", "a", "x \\boxed{9}", "a", "a", "b", "a", "x"]
        start = time.monotonic()
        results = pool.map(golds, preds, timeout=0.5)
        elapsed = time.monotonic() - start
        assert results == [
            ("a", True),
            (None, False),  # hung: killed at the deadline
            (r"x \boxed{9}", True),
            (None, False),  # crashed
            (None, False),  # raised
            ("b", True),
            (None, False),
            ("c", False),
        ]
        assert pool.respawns == 3  # two hangs and a crash; the raising worker survives
        assert elapsed < 5  # respawns happen in the background of the other worker's items
        assert pool.map(["z"], ["z"], timeout=5) == [("z", True)]  # replacements work
    finally:
        pool.close()


def test_timed_out_item_still_reports_its_box(helper_check):
    pool = VerifierPool(1, check_fn=helper_check)
    try:
        start = time.monotonic()
        # The worker dies with the item; the parent still extracts the box for the logs.
        assert pool.map(["1"], [r"HANG \boxed{5}"], timeout=0.3) == [("5", False)]
        assert time.monotonic() - start < 10  # includes the worker's start
    finally:
        pool.close()
