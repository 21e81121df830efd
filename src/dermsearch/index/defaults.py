"""How an index build commits and distributes its work, by default: one place for the numbers
that the build functions and the CLI's flags share (this module imports nothing, so the CLI reads
it while building its parser)."""

COMMIT_EVERY = 128   # images per atomic commit of a build (an interrupted build resumes after the last one)
DASK_CHUNK = 64      # images per Dask task of a distributed build
