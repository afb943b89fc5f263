#!/usr/bin/env bash
# `make sanitize`: the native transcoder's property tests under AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
# Why: ingest/avro/_transcode.c reads hostile bytes. Undefined behaviour there need not show
# as a wrong answer on this compiler (negating an INT64_MIN block count once let a record
# through that the Python path refuses), and an out-of-bounds read may only show on
# another machine. This builds a second copy of the extension with -fsanitize=address,
# undefined into build/sanitize (the installed one is untouched), loads it in place of
# ingest.avro._transcode and runs tests/unit/test_transcode*.py, whose properties feed it
# generated and damaged records. Any sanitizer report stops the run with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
CC="${CC:-gcc}"
OUT=build/sanitize
mkdir -p "$OUT"

include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
so="$OUT/_transcode$suffix"
"$CC" -shared -fPIC -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror \
    -I"$include" ingest/avro/_transcode.c -o "$so"

# The interpreter is not instrumented, so the ASan runtime must be loaded before it.
asan=$("$CC" -print-file-name=libasan.so)
if [[ ! -e "$asan" ]]; then
    echo "sanitize: $CC has no libasan.so (install the compiler's ASan runtime)" >&2
    exit 2
fi

# detect_leaks=0: CPython keeps interned and static objects until exit, which LeakSanitizer
# would report by the thousand; the extension's own buffers are freed on every path and
# out-of-bounds use of them is what ASan checks. PYTHONMALLOC=malloc: without it small
# PyMem blocks come from pymalloc's arenas, where ASan cannot see an overflow.
export LD_PRELOAD="$asan"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:print_summary=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc
# A quarter of the properties' examples: under ASan every allocation is several times
# slower, and CI keeps this step to a couple of minutes.
export TRANSCODE_EXAMPLES="${TRANSCODE_EXAMPLES:-100}"
exec "$PYTHON" - "$so" "$@" <<'PY'
"""Load the sanitized build as ingest.avro._transcode, then run the transcoder's tests."""
import glob
import importlib.util
import sys

import pytest

path = sys.argv[1]
spec = importlib.util.spec_from_file_location("ingest.avro._transcode", path)
assert spec is not None and spec.loader is not None
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["ingest.avro._transcode"] = module

import ingest.avro.transcode  # noqa: E402

assert ingest.avro.transcode.Transcoder is module.Transcoder, "the sanitized build is not in use"
print(f"sanitize: ingest.avro._transcode from {path}", flush=True)
tests = sorted(glob.glob("tests/unit/test_transcode*.py"))
# --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process;
# pytest's default capture of that descriptor would swallow the report with it.
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--capture=sys", *tests, *sys.argv[2:]]))
PY
