"""cffi build script for the edge_eco native kernel (out-of-line API mode).

Run by ``setup.py`` (``cffi_modules``) at install time; produces ``edge_eco._edge_eco_native``.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["featurize.c", "router.c", "ortrun.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "edge_eco.h").read_text())
ffibuilder.set_source(
    "edge_eco._edge_eco_native",
    '#include "edge_eco.h"',
    sources=[str((HERE / s).relative_to(HERE.parent)) for s in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
