"""Keep TensorFlow's native start-up notices off the console unless LOG_LEVEL is DEBUG.

TensorFlow's C++ code prints INFO/WARNING lines to the process's stderr (file descriptor 2)
that mean nothing to a person running the gallery ("oneDNN custom operations are on",
"This TensorFlow binary is optimized to use..."). TF_CPP_MIN_LOG_LEVEL silences those logged
after TensorFlow initialises its logging; the ones printed while its libraries load ignore it,
so they are filtered out of file descriptor 2 while the model loads. Errors always pass.
"""
import contextlib
import os
import re
import sys
import threading

# "I0000 00:00:1796284419.503786   16366 port.cc:153] ..." (absl's INFO or WARNING line) and the
# banner absl prints before its first line.
NATIVE_NOTICE = re.compile(rb"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\))")


def silence_tensorflow_notices(log_level: str) -> None:
    """Ask TensorFlow (not yet imported) to log errors only, unless the log level is DEBUG."""
    if log_level.upper() != "DEBUG":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def native_notices_dropped(enabled: bool = True):
    """Within the block, drop TensorFlow's native notice lines from stderr; every other line passes.

    fd 2 becomes a pipe read by a thread that forwards all other lines to the real stderr, so
    output of other threads (a web server's request log) is kept.
    """
    try:
        saved = os.dup(2) if enabled else None
    except OSError:  # no stderr at all: nothing to filter
        saved = None
    if saved is None:
        yield
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_NOTICE.match(line):
                    os.write(saved, line)

    forwarder = threading.Thread(target=forward, name="native-notice-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the forwarder reads to the end and stops
        forwarder.join()
        os.close(saved)
