from rootless_gpu_spawner.safetext import printable, printable_lines


def test_plain_text_unchanged():
    assert printable("image rgs-lab:latest pulled") == "image rgs-lab:latest pulled"


def test_escape_sequences_and_newlines_escaped():
    forged = "ok\x1b[2J\rINFO forged line\n[root] done\x07"
    out = printable(forged)
    assert "\x1b" not in out and "\r" not in out and "\n" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "\\x0d" in out and "\\x0a" in out


def test_bidi_override_and_c1_escaped():
    out = printable("a\u202eb\x9bc")
    assert out == "a\\u202eb\\x9bc"


def test_bounded_and_bytes():
    assert len(printable("x" * 10_000, 100)) == 100
    assert printable(b"\xff\xfeok") == "\ufffd\ufffdok"
    assert printable(12) == "12"


def test_keep_newlines_and_tail():
    assert printable("a\nb", keep_newlines=True) == "a\nb"
    tail = printable_lines("1\n2\n3\x1b\n", limit_lines=2)
    assert tail == ["2", "3\\x1b"]
