"""`make bench`: the whole stack on its own PostgreSQL and Kafka, measured (README, "Performance").

Modules: `stack` starts and stops everything; `loadgen` places orders over raw HTTP/1.1 (open or
closed loop, run in a process of its own); `ceiling` is the bare FastAPI endpoint that bounds what
one Python HTTP server can do here; `procstat` reads CPU time and memory from /proc; `database`
reads each stage's timestamps and pg_stat_statements; `profiling` runs py-spy; `report` prints the
table and draws the plots; `__main__` runs the phases in order.
"""
