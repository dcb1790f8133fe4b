"""Shared test settings."""

from threadpoolctl import threadpool_limits

# Every test runs on one BLAS thread: xdist already runs one test per core, and the
# networks' matmuls are too small to gain from more (they collapse when threads
# compete for cores; see minimp.tools.lessons).
_blas_limit = threadpool_limits(limits=1, user_api="blas")
