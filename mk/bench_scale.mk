# 100 000 users on this machine (issue 18): an ejabberd cluster of its own (several nodes
# joined by ejabberdctl, each under the open-file limit), an amoc master and slaves from a
# release built for the run, xmpp_one_to_one at one message per user per 100 s; one table
# (bench/bench_scale.py; results in bench/RESULTS.md and the README). About 25 minutes.
# A quick run: make bench-scale BENCH_SCALE_USERS=2000 BENCH_SCALE_OPTS="--interval 10 --window 10"
BENCH_SCALE_USERS ?= 100000
BENCH_SCALE_OPTS ?=

.PHONY: bench-scale

bench-scale: deps dev
	timeout --kill-after=60 2400 $(PY) bench/bench_scale.py --users $(BENCH_SCALE_USERS) $(BENCH_SCALE_OPTS)
