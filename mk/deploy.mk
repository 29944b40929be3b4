# A cluster on many machines (README, "A cluster"): Ansible prepares the hosts and deploys
# the release, Fabric starts and stops the nodes, `make console` opens the master's console.
#   make prepare            once per new host (system packages, the run user, limits)
#   make deploy             after each change (code, scenarios, group_vars/amoc)
#   make restart            the master, then the slaves, on the release deployed last
#                           (`make deploy restart`: both, in that order)
#   make start / status / logs / stop
#   make reports            the master's reports into reports/ beside the inventory
#   make run SCENARIO=s USERS=n DURATION=seconds [THRESHOLDS='cond; cond'] [SET='k=v ...']
#                           a headless run on the started cluster: merged figures, the report
#                           on the master, exit 0 passed / 1 a threshold failed / 2 refused
#   make console            the master's console over ssh (Ctrl+D detaches)
# INVENTORY=path picks another inventory (its group_vars/amoc must sit next to it); SSH_KEY=path
# the private key for every host (else the inventory's or ssh's default); KNOWN_HOSTS=path
# the known_hosts file that holds the hosts' keys (else ssh's ~/.ssh/known_hosts).
INVENTORY ?= hosts
SSH_KEY   ?=
KNOWN_HOSTS ?=
LINES     ?= 40
ANSIBLE_ARGS ?=

# With KNOWN_HOSTS, Ansible's ssh checks the hosts' keys against that file (ssh takes the
# first value of an option: these come before the inventory's ansible_ssh_common_args).
ANSIBLE_SSH := $(if $(KNOWN_HOSTS),ANSIBLE_SSH_ARGS='-C -o ControlMaster=auto -o ControlPersist=60s \
	-o UserKnownHostsFile=$(abspath $(KNOWN_HOSTS))')
ANSIBLE_PLAYBOOK := ANSIBLE_CONFIG=$(CURDIR)/ansible/ansible.cfg $(ANSIBLE_SSH) \
	$(VENV)/bin/ansible-playbook -i $(INVENTORY) \
	$(if $(SSH_KEY),-e ansible_ssh_private_key_file=$(abspath $(SSH_KEY))) $(ANSIBLE_ARGS)
FAB := AMOC_INVENTORY=$(INVENTORY) AMOC_SSH_KEY=$(SSH_KEY) \
	AMOC_KNOWN_HOSTS=$(if $(KNOWN_HOSTS),$(abspath $(KNOWN_HOSTS))) $(VENV)/bin/fab

.PHONY: inventory prepare deploy start stop restart status logs reports run console lint-ansible

inventory:
	@test -e "$(INVENTORY)" || { echo "make: the inventory '$(INVENTORY)' does not exist (INVENTORY=path)" >&2; exit 2; }

prepare: dev inventory
	$(ANSIBLE_PLAYBOOK) ansible/prepare.yml

deploy: dev inventory echarts
	$(ANSIBLE_PLAYBOOK) ansible/deploy.yml

start stop status reports: dev inventory
	@$(FAB) $@

# After the deploy when both are asked for (`make deploy restart`), even with -j.
restart: dev inventory $(filter deploy,$(MAKECMDGOALS))
	@$(FAB) restart

logs: dev inventory
	@$(FAB) logs --lines $(LINES)

run: dev inventory
	@test -n "$(SCENARIO)" -a -n "$(USERS)" -a -n "$(DURATION)" || { echo "make run needs \
	SCENARIO=name USERS=count DURATION=seconds (THRESHOLDS='cond; cond' and SET='k=v ...' \
	optional)" >&2; exit 2; }
	@$(FAB) run --scenario '$(SCENARIO)' --users '$(USERS)' --duration '$(DURATION)' \
		--thresholds '$(THRESHOLDS)' --settings '$(SET)'

console: dev inventory
	@$(FAB) console

# ansible-lint (profile production, see .ansible-lint) and ruff on the Fabric tasks and the
# role's scripts.
lint-ansible: dev
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint ansible
	$(VENV)/bin/ruff check fabfile.py ansible/roles/amoc/files
	$(VENV)/bin/ruff format --check fabfile.py ansible/roles/amoc/files
