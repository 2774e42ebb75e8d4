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
