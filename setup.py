"""Declares the Cython extension only; everything else lives in pyproject.toml."""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("OMNI_PLACE_DEBUG_CYTHON") == "1"
SANITIZE = os.environ.get("OMNI_PLACE_SANITIZE")  # e.g. "address,undefined"

cflags = ["-std=c11", "-pthread", "-O0" if DEBUG else "-O2", "-Wall", "-Wextra", "-Wno-unused-function"]
lflags = ["-pthread"]  # csrc/membw.c
if SANITIZE:
    cflags += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g"]
    lflags += [f"-fsanitize={SANITIZE}"]

core = Extension(
    "omni_place._core",
    sources=["omni_place/_core.pyx", "csrc/solver.c", "csrc/gguf_scan.c", "csrc/membw.c"],
    include_dirs=["csrc", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=cflags,
    extra_link_args=lflags,
)

setup(
    ext_modules=cythonize(
        [core],
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
            "cdivision": True,
        },
    )
)
