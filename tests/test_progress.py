"""Progress display: a tqdm bar on a terminal, plain periodic lines in logs."""

import io

import pytest
from tqdm.auto import tqdm

from usae_jax.progress import PlainProgress, progress


class FakeClock:
    def __init__(self, step_s=0.0):
        self.now, self.step_s = 0.0, step_s

    def __call__(self):
        self.now += self.step_s
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_tenth_of_the_work():
    out = io.StringIO()
    bar = PlainProgress(1000, desc="train USAE", unit="step", stream=out, clock=FakeClock(0.01))
    for i in range(1000):
        bar.update(1)
        if i == 500:
            bar.set_postfix(loss="0.1234")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10, lines
    assert [line.split(",")[0] for line in lines] == [
        f"train USAE: {n}/1000 step ({n // 10}%)" for n in range(100, 1001, 100)
    ]
    assert "loss=0.1234" in lines[-1] and "loss" not in lines[4]
    assert "step/s" in lines[0]


def test_plain_lines_every_interval_and_after_resume():
    out = io.StringIO()
    bar = PlainProgress(10**6, initial=450_000, stream=out, interval_s=60, clock=FakeClock(25.0))
    for _ in range(10):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    # 25 s per update: a line at 75 s, 150 s, 225 s (3rd, 6th, 9th update) and one at close.
    assert [line.split(" ")[0] for line in lines] == [
        f"{n}/1000000" for n in (450_003, 450_006, 450_009, 450_010)
    ]
    out = io.StringIO()
    bar = PlainProgress(1000, initial=450, stream=out, clock=FakeClock())
    for _ in range(50):
        bar.update(1)
    assert out.getvalue().startswith("500/1000 it (50%)")  # the next tenth after a resume


def test_progress_picks_a_bar_only_on_a_terminal():
    terminal, log = Terminal(), io.StringIO()
    bar = progress(100, desc="x", unit="img", stream=terminal)
    assert isinstance(bar, tqdm)
    plain = progress(100, desc="x", unit="img", stream=log)
    assert isinstance(plain, PlainProgress)
    for _ in range(100):
        bar.update(1)
        plain.update(1)
    bar.close()
    plain.close()
    assert "\r" in terminal.getvalue() and "100/100" in terminal.getvalue()
    assert "\r" not in log.getvalue() and len(log.getvalue().splitlines()) == 10
    silent = io.StringIO()
    off = progress(100, enabled=False, stream=silent)
    off.update(100)
    off.close()
    assert silent.getvalue() == ""


def test_bad_progress_arguments():
    with pytest.raises(ValueError, match="fraction"):
        PlainProgress(10, stream=io.StringIO(), fraction=0)
    with pytest.raises(ValueError, match="interval_s"):
        PlainProgress(10, stream=io.StringIO(), interval_s=0)
    with pytest.raises(ValueError, match=">= 0"):
        PlainProgress(-1, stream=io.StringIO())


@pytest.mark.parametrize("total", [7, 11, 37, 999, 1234])
def test_ten_lines_whatever_the_total(total):
    out = io.StringIO()
    bar = PlainProgress(total, unit="img", stream=out, clock=FakeClock())
    for _ in range(total):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == min(total, 10), lines
    assert lines[-1].startswith(f"{total}/{total} img (100%)")
