# A cluster on many machines (README, "A cluster"): Ansible prepares the hosts and deploys
# the release, Fabric starts and stops the nodes, `make console` opens the master's console.
#   make prepare            once per new host (system packages, the run user, limits)
#   make deploy             after each change (code, scenarios, group_vars/amoc)
#   make start / status / logs / stop
#   make console            the master's console over ssh (Ctrl+D detaches)
# INVENTORY=path picks another inventory (its group_vars/amoc sits next to it); SSH_KEY=path
# the private key for every host (else the inventory's or ssh's default).
INVENTORY ?= hosts
SSH_KEY   ?=
LINES     ?= 40
ANSIBLE_ARGS ?=

ANSIBLE_PLAYBOOK := ANSIBLE_CONFIG=$(CURDIR)/ansible/ansible.cfg $(VENV)/bin/ansible-playbook -i $(INVENTORY) \
	$(if $(SSH_KEY),-e ansible_ssh_private_key_file=$(abspath $(SSH_KEY))) $(ANSIBLE_ARGS)
FAB := AMOC_INVENTORY=$(INVENTORY) AMOC_SSH_KEY=$(SSH_KEY) $(VENV)/bin/fab

.PHONY: inventory prepare deploy start stop status logs console lint-ansible

inventory:
	@test -e "$(INVENTORY)" || { echo "make: the inventory '$(INVENTORY)' does not exist (INVENTORY=path)" >&2; exit 2; }

prepare: dev inventory
	$(ANSIBLE_PLAYBOOK) ansible/prepare.yml

deploy: dev inventory
	$(ANSIBLE_PLAYBOOK) ansible/deploy.yml

start stop status: dev inventory
	@$(FAB) $@

logs: dev inventory
	@$(FAB) logs --lines $(LINES)

console: dev inventory
	@$(FAB) console

# ansible-lint (profile production, see .ansible-lint) and ruff on the Fabric tasks.
lint-ansible: dev
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint ansible
	$(VENV)/bin/ruff check fabfile.py
	$(VENV)/bin/ruff format --check fabfile.py
