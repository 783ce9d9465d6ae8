"""The C core under AddressSanitizer + UndefinedBehaviorSanitizer.

What runs (in the default suite, so in CI; about a minute on 2 cores):

1. ``test_sanitizers_catch_an_injected_bug``: csrc/gguf_scan.c with a one-byte-too-lax bound is
   compiled with the sanitizer flags below and driven with a truncated buffer; the test passes
   only if ASan reports the overflow. This proves the toolchain really instruments, so a green
   run of (2) means something.
2. ``test_property_suite_under_sanitizers``: the extension is rebuilt from the current sources
   (``omni_place/_core.pyx`` cythonized, or the ``_core.c`` that ``pip install -e`` generated
   when Cython is not importable) together with csrc/solver.c, csrc/gguf_scan.c and csrc/membw.c, with
   ``-fsanitize=address,undefined -fno-sanitize-recover=undefined``, into a temporary copy of the
   package. The core's property suite (tests/test_core_exact.py: brute force and MILP oracles,
   invalid inputs, state limits, threads), the GGUF reader and fuzz tests and the thread tests then
   run in a subprocess that imports that copy, with the ASan runtime preloaded. Any ASan or
   UBSan report aborts the subprocess and fails the test with the report. The subprocess imports
   omni_place before pytest starts: ``tests`` is a package, so pytest puts the checkout's root
   (which holds the uninstrumented omni_place) first on sys.path when it collects it.

By hand, the same run:

    OMNI_PLACE_SANITIZE_KEEP=/tmp/asan python -m pytest -q tests/test_sanitizers.py
    # then, with the build kept in /tmp/asan:
    cd /tmp && PYTHONPATH=/tmp/asan/pkg LD_PRELOAD=$(gcc -print-file-name=libasan.so) \\
      ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \\
      python -c "import sys, omni_place._core, pytest; sys.exit(pytest.main(sys.argv[1:]))" \\
      -q /path/to/omni_place/tests/test_core_exact.py

(``OMNI_PLACE_SANITIZE=address,undefined python setup.py build_ext --inplace`` also builds an
instrumented extension, but Python then refuses to import it unless the ASan runtime is
preloaded as above, and it replaces the normal in-place build.)

Skipped (with the reason) only when no C compiler, no ASan runtime or no C source of the
extension is available.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PKG = ROOT / "omni_place"

SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
             "-g", "-O1"]
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")
# Same directives as setup.py: the instrumented build runs the code that ships.
CYTHON_DIRECTIVES = ["language_level=3", "boundscheck=False", "wraparound=False", "initializedcheck=False",
                     "cdivision=True"]
SUITE = ["test_core_exact.py", "test_gguf_reader.py", "test_fuzz_gguf.py", "test_threads.py"]
# pytest, with omni_place (and its _core) imported from PYTHONPATH before pytest can put the
# checkout's root on sys.path; prints where the core came from
PYTEST_WITH_CORE = ("import sys, omni_place._core as c, pytest; print('omni_place._core:', c.__file__, flush=True); "
                    "sys.exit(pytest.main(sys.argv[1:]))")

pytestmark = pytest.mark.sanitizers


def _cc() -> str:
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc})")
    return cc


def _runtime(cc: str, lib: str) -> str:
    out = subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
    if not out or not os.path.isabs(out) or not os.path.exists(out):
        pytest.skip(f"{cc} has no {lib} (install the compiler's sanitizer runtime, e.g. libasan8)")
    return out


def _env(libasan: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONPATH", "COV_CORE_SOURCE")}
    env.update(SAN_ENV)
    env["LD_PRELOAD"] = libasan
    env.update(extra or {})
    return env


def _reports(text: str) -> bool:
    return any(m in text for m in REPORT_MARKERS)


@pytest.fixture(scope="module")
def toolchain() -> tuple[str, str]:
    cc = _cc()
    return cc, _runtime(cc, "libasan.so")


def test_sanitizers_catch_an_injected_bug(tmp_path: Path, toolchain: tuple[str, str]) -> None:
    cc, _ = toolchain
    src = (CSRC / "gguf_scan.c").read_text()
    bound = "if (len - offset < 8) {"
    assert bound in src, "gguf_scan.c changed: update the injected bug"
    (tmp_path / "buggy_scan.c").write_text(src.replace(bound, "if (len - offset < 7) {"))  # off by one
    (tmp_path / "driver.c").write_text(r"""
#include <stdlib.h>
#include <string.h>
#include "omni_place.h"
int main(void) {
    /* one string "abc" followed by 7 bytes: the buggy bound reads an 8-byte length from them */
    uint8_t *buf = malloc(18);
    memcpy(buf, "\x03\0\0\0\0\0\0\0abc\x01\x02\x03\x04\x05\x06\x07", 18);
    size_t end = 0;
    int rc = op_gguf_skip_strings(buf, 18, 0, 2, &end);
    free(buf);
    return rc == OP_OK ? 0 : 1;
}
""")
    exe = tmp_path / "driver"
    subprocess.run([cc, *SAN_FLAGS, "-std=c11", f"-I{CSRC}", str(tmp_path / "driver.c"),
                    str(tmp_path / "buggy_scan.c"), "-o", str(exe)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(SAN_ENV)
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode != 0 and "heap-buffer-overflow" in run.stderr, run.stderr[-2000:]
    # and the real source is clean on the same input
    subprocess.run([cc, *SAN_FLAGS, "-std=c11", f"-I{CSRC}", str(tmp_path / "driver.c"),
                    str(CSRC / "gguf_scan.c"), "-o", str(exe)], check=True, capture_output=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1 and not _reports(run.stderr), run.stderr[-2000:]


def _extension_source(build: Path) -> Path:
    """C source of the extension from the current .pyx (Cython) or the one pip generated."""
    if importlib.util.find_spec("Cython") is not None:
        out = build / "_core.c"
        cmd = [sys.executable, "-m", "cython", "-3", "-I", str(CSRC), "-I", str(PKG)]
        for d in CYTHON_DIRECTIVES:
            cmd += ["-X", d]
        # cythonize in a copy so that no file of the checkout is touched
        for name in ("_core.pyx", "_core.pxd"):
            shutil.copy2(PKG / name, build / name)
        subprocess.run([*cmd, str(build / "_core.pyx"), "-o", str(out)], check=True, capture_output=True,
                       text=True, timeout=300)
        return out
    generated = PKG / "_core.c"
    if generated.exists() and generated.stat().st_mtime >= (PKG / "_core.pyx").stat().st_mtime:
        return generated
    pytest.skip("neither Cython nor an up-to-date omni_place/_core.c is available")


def build_instrumented(dest: Path, cc: str, csrc: Path = CSRC) -> Path:
    """A copy of the package at dest/pkg whose _core is built with the sanitizers; returns pkg dir."""
    build = dest / "build"
    build.mkdir(parents=True, exist_ok=True)
    core_c = _extension_source(build)
    includes = [f"-I{csrc}", f"-I{np.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    flags = [*SAN_FLAGS, "-fPIC", "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION", *includes]
    objs, procs = [], []
    c11 = ["-std=c11", "-pthread"]
    for src, std in ((core_c, []), *((csrc / name, c11) for name in ("solver.c", "gguf_scan.c", "membw.c"))):
        obj = build / (src.stem + ".o")
        objs.append(obj)
        procs.append(subprocess.Popen([cc, *flags, *std, "-c", str(src), "-o", str(obj)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    pkg = dest / "pkg"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(PKG, pkg / "omni_place",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.pyd"))
    so = pkg / "omni_place" / ("_core" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([cc, "-shared", "-pthread", *SAN_FLAGS, *[str(o) for o in objs], "-o", str(so)], check=True,
                   capture_output=True, text=True)
    data = so.read_bytes()
    assert b"__asan_report" in data and b"__ubsan_handle" in data, "the extension is not instrumented"
    return pkg


def run_suite(pkg: Path, dest: Path, libasan: str) -> tuple[int, str]:
    """Run SUITE in a subprocess that imports the package copy at pkg; (exit code, output)."""
    env = _env(libasan, {"PYTHONPATH": str(pkg), "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "dev"),
                         "OMNI_PLACE_FUZZ_EXAMPLES": "200"})
    # The subprocess runs outside the checkout so that `import omni_place` finds the copy.
    probe = subprocess.run([sys.executable, "-c", "import omni_place._core as c; print(c.__file__)"],
                           cwd=dest, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip().startswith(str(pkg)), probe.stdout + probe.stderr
    # --capture=sys: a sanitizer report goes to the real fd 2, not into pytest's capture file
    cmd = [sys.executable, "-c", PYTEST_WITH_CORE, "-q", "-x", "--capture=sys", "-p", "no:cacheprovider",
           "-W", "ignore::pytest.PytestUnknownMarkWarning",
           "--deselect", f"{ROOT / 'tests' / 'test_core_exact.py'}::test_gil_is_released",  # timing, not memory
           *[str(ROOT / "tests" / t) for t in SUITE]]
    run = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=900)
    assert f"omni_place._core: {pkg}" in run.stdout, run.stdout[:2000] + run.stderr[-2000:]
    return run.returncode, run.stdout + run.stderr


def test_property_suite_under_sanitizers(tmp_path_factory: pytest.TempPathFactory,
                                         toolchain: tuple[str, str]) -> None:
    cc, libasan = toolchain
    keep = os.environ.get("OMNI_PLACE_SANITIZE_KEEP")
    dest = Path(keep) if keep else tmp_path_factory.mktemp("asan")
    pkg = build_instrumented(dest, cc)
    code, text = run_suite(pkg, dest, libasan)
    assert not _reports(text), text[-6000:]
    assert code == 0, text[-6000:]
    assert " passed" in text, text[-2000:]
