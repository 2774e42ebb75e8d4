import os
import stat

from scorelab.io.checkpoints import atomic_write_bytes


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    """mkstemp makes 0600 files; an atomically written report must be as readable as one written with open()."""
    atomic_write_bytes(tmp_path / "a.md", b"x")
    with open(tmp_path / "b.md", "wb") as f:
        f.write(b"x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "a.md") == mode(tmp_path / "b.md")
    assert (tmp_path / "a.md").read_bytes() == b"x"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_unused_dir_never_returns_a_used_folder(tmp_path):
    from scorelab.io.checkpoints import unused_dir

    base = tmp_path / "demo"
    assert unused_dir(base) == base
    base.mkdir()
    assert unused_dir(base) == base  # empty: free
    (base / "report.md").write_text("x")
    assert unused_dir(base) == tmp_path / "demo-2"
    (tmp_path / "demo-2").mkdir()
    (tmp_path / "demo-2" / "f").write_text("x")
    assert unused_dir(base) == tmp_path / "demo-3"
