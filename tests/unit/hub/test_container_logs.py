"""hub/container_logs.py: Docker's multiplexed log frames taken apart, bounded."""

from rootless_gpu_spawner.hub.container_logs import demultiplex


def frame(kind: int, data: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_frames_of_both_streams_in_order():
    data = frame(1, b"starting\n") + frame(2, b"error: \xff\x1b[31m no\n")
    assert demultiplex(data) == b"starting\nerror: \xff\x1b[31m no\n"


def test_a_frame_cut_by_the_cap_keeps_what_arrived():
    assert demultiplex(frame(1, b"one\n") + frame(2, b"two and more\n")[:12]) == b"one\ntwo "


def test_unframed_tty_output_is_kept_as_it_is():
    assert demultiplex(b"plain tty text\n") == b"plain tty text\n"
