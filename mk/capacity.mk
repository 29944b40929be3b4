# The capacity search on a deployed cluster (README, "Capacity search"): the master's
# `bin/amoc find-capacity` raises the load over every slave that is up, holds each step,
# bisects, and prints the table of steps and the largest load that held.
#   make find-capacity SCENARIO=s USERS=START:STEP:MAX THRESHOLDS='cond; cond'
#                      [RATE=START:STEP:MAX instead of USERS] [HOLD=60s] [SET='k=v ...']
# exit 0: a capacity was found, 1: even the first step failed, 2: refused (make says 2 for
# any failed recipe; `fab find-capacity` itself gives the search's own code).
HOLD       ?= 60s
RESOLUTION ?= 0

.PHONY: find-capacity

find-capacity: dev inventory
	@test -n "$(SCENARIO)" -a -n "$(THRESHOLDS)" -a -n "$(USERS)$(RATE)" || { echo "make \
	find-capacity needs SCENARIO=name THRESHOLDS='cond; cond' and USERS=START:STEP:MAX or \
	RATE=START:STEP:MAX (HOLD=60s and SET='k=v ...' optional)" >&2; exit 2; }
	@$(FAB) find-capacity --scenario '$(SCENARIO)' --thresholds '$(THRESHOLDS)' \
		$(if $(USERS),--users '$(USERS)') $(if $(RATE),--rate '$(RATE)') --hold '$(HOLD)' \
		--resolution '$(RESOLUTION)' --settings '$(SET)'

# The same search against a local server (the demo's, see mk/xmpp.mk), with its CPU and
# memory monitored by pid: each user sends a message every 100 ms, and the limit is a TTD
# p99 of DEMO_CAPACITY_TTD ms (README, "Capacity search").
DEMO_CAPACITY_MAX  ?= 2600
DEMO_CAPACITY_STEP ?= 400
DEMO_CAPACITY_TTD  ?= 5
DEMO_CAPACITY_HOLD ?= 20s
# Every step has fresh users: the plan's first line says how many ids it may take.
DEMO_CAPACITY_IDS  ?= 30000

.PHONY: demo-capacity

demo-capacity: deps dev rel
	@$(MAKE) --no-print-directory xmpp-start XMPP_OPTS=--no-mam
	@set -e; trap '$(XMPP_TOOL) remove --name $(XMPP_NAME)' EXIT; \
	$(XMPP_TOOL) register --name $(XMPP_NAME) --first 1 --last $(DEMO_CAPACITY_IDS); \
	$(REL)/bin/amoc --name demo find-capacity xmpp_one_to_one --arrival 1000 \
		--users 200:$(DEMO_CAPACITY_STEP):$(DEMO_CAPACITY_MAX) --hold $(DEMO_CAPACITY_HOLD) \
		--thresholds 'xmpp.ttd_ms.p99 < $(DEMO_CAPACITY_TTD)' \
		--set xmpp_port=$(XMPP_PORT) --set xmpp_sasl=PLAIN --set message_interval=100 \
		--set messages_per_user=1000 \
		--set monitor_hosts=local:$$($(XMPP_TOOL) pid --name $(XMPP_NAME))
