"""Serve one step with gunicorn: `python tools/run.py [STEP] [PORT]`.

`make run` calls it. It prints the address, then becomes gunicorn itself, so
that Ctrl-C reaches gunicorn directly and stops it cleanly.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.server import ServerError, find_step, step_dirs  # noqa: E402

# The core tutorial ends here; later steps are bonus material.
LAST_CORE_STEP = 5


def main(argv: list[str]) -> int:
    step = argv[1] if len(argv) > 1 else ""
    port = argv[2] if len(argv) > 2 and argv[2] else "8000"
    try:
        if step:
            step_dir = find_step(step)
        else:
            step_dir = [p for p in step_dirs() if int(p.name[:2]) <= LAST_CORE_STEP][-1]
    except ServerError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    print(f"Serving {step_dir.name} on http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
    os.chdir(step_dir)
    # A name per step and port: gunicorn 27 stops the dirty arbiter of another
    # server with the same name (see proc_name in gunicorn_conf.py).
    name = f"dirty-chat-{step_dir.name[:2]}-{port}"
    gunicorn = ["-m", "gunicorn", "-c", "gunicorn_conf.py", "--bind", f"127.0.0.1:{port}", "--name", name]
    os.execv(sys.executable, [sys.executable, *gunicorn, "main:app"])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
