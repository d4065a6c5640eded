# migrator — two commands set everything up on a fresh Debian 12 machine as root:
#   make demo   deploy the demo plan, write data, back up, wipe, restore, verify
#   make test   install what the tests need, build/cache the lab images, run the whole suite
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV       ?= .venv
PY         := $(VENV)/bin/python
PYTEST_ARGS ?=
# Debian packages the tool and its lab need (podman and its runtime, image building, archive pipeline,
# the second VSN's sshd, mail, cron, Docker Engine for the Docker VSNs, chromium for the dashboard test).
APT_PACKAGES := podman runc netavark aardvark-dns uidmap debootstrap busybox-static zstd age tar \
                openssl iproute2 iptables openssh-server openssh-client acl attr cron mutt curl ca-certificates python3-venv python3-apt \
                chromium chromium-driver \
                docker.io
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export CONTAINERS_STORAGE_CONF := $(CURDIR)/lab/storage.conf

.PHONY: help deps venv images test unit integration demo lint clean-lab

help:
	@echo "make demo   - run the main job on examples/demo-plan.json (deploy, write, backup, wipe, restore, verify)"
	@echo "make test   - install deps, build lab images, run unit + integration tests"
	@echo "make unit   - unit tests only (no lab)"
	@echo "make lint   - ruff"

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  case " $$missing " in *" docker.io "*) \
	    if [ -d /run/systemd/system ]; then systemctl disable -q --now docker.socket docker.service containerd.service 2>/dev/null || true; fi ;; \
	  esac; \
	fi
	@# The lab runs its own private dockerd per Docker VSN, each in its own network namespace; a system
	@# dockerd would rewrite this machine's iptables (FORWARD policy DROP) under the podman VSNs.

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

images: deps
	lab/build-images.sh

unit: venv
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

test: deps venv images
	$(VENV)/bin/pytest tests --durations=25 $(PYTEST_ARGS)

demo: deps venv images
	examples/demo.sh

lint: venv
	$(VENV)/bin/ruff check migrator tests bench

clean-lab:
	rm -rf /var/cache/migrator-lab /var/lib/migrator-lab
