"""scorelab._utils.progress: tqdm on a terminal only, periodic log lines otherwise (issue #21)."""
from tqdm.std import tqdm as std_tqdm

from scorelab._utils import _LogProgress, progress


def test_non_tty_gets_log_lines_without_carriage_returns(capsys):
    bar = progress(total=3, desc="train", every=0.0)
    assert isinstance(bar, _LogProgress)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss=0.5)
    bar.update(0)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[0] == "[train] 1/3 (0 s)"
    assert err.splitlines()[-1].endswith("loss=0.5")


def test_log_lines_are_rate_limited(capsys):
    bar = progress(total=1000, desc="x", every=3600.0)
    for _ in range(1000):
        bar.update(1)
    assert capsys.readouterr().err == ""
    assert bar.n == 1000


def test_iteration_and_disable(capsys):
    assert list(progress(range(4), desc="y", every=3600.0)) == [0, 1, 2, 3]
    quiet = progress(range(2), disable=True)
    assert isinstance(quiet, std_tqdm) and list(quiet) == [0, 1]
    assert capsys.readouterr().err == ""
