# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Everything is installed from the one pinned constraints file (the Docker image uses the same file).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/impressions demo

# Two pytest processes, a test module each at a time (most tests wait on processes and sockets, not on CPU):
# about 7 minutes on 2 cores (measured 2026-12-06: 5.9-6.7 min, the install excluded). TEST_ARGS passes more, e.g. TEST_ARGS="-n 0 -k drills".
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(TEST_ARGS)

bench: install
	$(BIN)/python bench/bench.py

bench-quick: install
	BENCH_QUICK=1 $(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) warehouse demo-data .pytest_cache

# ---- the image and the AWS deployment (docker/, batch/, docs/aws.md)
# The image, with docker or (no Docker engine) podman: TARGET=impressions|node|partition|join|update.
TARGET ?= impressions
TAG    ?= impressions:$(TARGET)
.PHONY: image deploy
image:
	docker/build.sh --target $(TARGET) --tag $(TAG)

# The stack, the image in ECR and the job files in S3; prints the `impressions submit` line to run:
#   make deploy STACK=impressions VPC=vpc-... SUBNETS=subnet-a,subnet-b [NODES=3]
deploy: install
	batch/deploy.sh --stack "$(STACK)" --vpc "$(VPC)" --subnets "$(SUBNETS)" $(if $(NODES),--nodes $(NODES))
