# Group chat (MUC) against one-to-one chat: load generator and server CPU per delivered
# message, TTD, on a private ejabberd (bench/bench_muc.py; results in bench/RESULTS.md).
BENCH_MUC_USERS ?= 1000

.PHONY: bench-muc

bench-muc: deps dev
	$(PY) bench/bench_muc.py --users $(BENCH_MUC_USERS)
