# A local ejabberd or Prosody for the demo, the tests and the benchmarks (tools/xmpp_server.py).
XMPP_NAME      ?= demo
XMPP_KIND      ?= ejabberd
XMPP_PORT      ?= 5222
XMPP_HTTP_PORT ?= 5280
# Non-empty: STARTTLS required, with a self-signed certificate (its path is printed).
XMPP_TLS       ?=
# More start flags, for example --scram, --tls-port 5223 or --no-mam.
XMPP_OPTS      ?=
XMPP_TOOL      := $(PYTHON) tools/xmpp_server.py

DEMO_USERS     ?= 1000
DEMO_RATE      ?= 200
DEMO_MESSAGES  ?= 10
# PLAIN: the server's cheapest login (AUTO picks SCRAM-SHA-512, which costs ejabberd with
# plain storage about 8 ms of CPU per login: some 120 logins/s on these two cores).
DEMO_SASL      ?= PLAIN

.PHONY: xmpp-install xmpp-start xmpp-stop xmpp-status xmpp-register

xmpp-install:
	$(XMPP_TOOL) install --kind $(XMPP_KIND)

xmpp-start: xmpp-install
	$(XMPP_TOOL) start --name $(XMPP_NAME) --kind $(XMPP_KIND) --port $(XMPP_PORT) \
		--http-port $(XMPP_HTTP_PORT) $(if $(XMPP_TLS),--tls,--no-tls) $(XMPP_OPTS)

xmpp-stop:
	$(XMPP_TOOL) stop --name $(XMPP_NAME)

xmpp-status:
	$(XMPP_TOOL) status --name $(XMPP_NAME)

xmpp-register:
	$(XMPP_TOOL) register --name $(XMPP_NAME) --first 1 --last $(DEMO_USERS)

# The main job: DEMO_USERS users log in to a local server (XMPP_KIND), each sends DEMO_MESSAGES
# chat messages to its neighbour (one a second) and records time to delivery; then a report,
# with the server's CPU and memory (amoc's monitor watches its pid) under the load.
# The server is removed at the end, so that each demo starts from an empty database.
demo: deps dev rel
	@$(MAKE) --no-print-directory xmpp-start
	@set -e; trap '$(XMPP_TOOL) remove --name $(XMPP_NAME)' EXIT; \
	$(XMPP_TOOL) register --name $(XMPP_NAME) --first 1 --last $(DEMO_USERS); \
	$(REL)/bin/amoc --name demo run xmpp_one_to_one --users $(DEMO_USERS) --rate $(DEMO_RATE) \
		--duration 300 --comment "make demo" --max-error-ratio 0.01 \
		--set xmpp_port=$(XMPP_PORT) --set xmpp_sasl=$(DEMO_SASL) \
		$(if $(XMPP_TLS),--set xmpp_tls=starttls) --set repeat_num=1 \
		--set messages_per_user=$(DEMO_MESSAGES) --set message_interval=1000 \
		--set monitor_hosts=local:$$($(XMPP_TOOL) pid --name $(XMPP_NAME))
