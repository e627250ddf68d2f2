# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make serve   -> the gRPC server on the bundled models, default and streaming (port 50051, metrics on 9090)
#   make test    -> the test suite (CPU only; slow and GPU tests are deselected)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: install sysdeps synth-deps serve test lint proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# espeak-ng and sox make the test audio; root (CI) installs them itself, others need sudo.
sysdeps:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng sox >/dev/null; }

# The speech synthesisers of `asr data synth`: Debian's contrib and non-free components (RHVoice, SVOX Pico,
# festvox-rablpc16k) are enabled first; then flite, festival and its voices, espeak-ng, WordNet's sentences, and
# the Python engines (Piper, Kokoro). Not needed for `make test`.
SYNTH_APT := rhvoice rhvoice-english libttspico-utils flite festival festvox-kallpc16k festvox-kdlpc16k \
	festvox-us-slt-hts festvox-rablpc16k espeak-ng wordnet-base sox
synth-deps: $(STAMP)
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	for f in /etc/apt/sources.list.d/debian.sources; do [ -f $$f ] && \
	  $$SUDO sed -i 's/^Components: main$$/Components: main contrib non-free/' $$f; done; \
	[ -f /etc/apt/sources.list ] && $$SUDO sed -i -E '/^deb .*debian/ s/ main$$/ main contrib non-free/' /etc/apt/sources.list; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYNTH_APT) >/dev/null
	$(PY) -m pip install -q -e '.[dev,bench,synth]'

# Both bundled models: requests get the default one unless they name `streaming` (RecognitionConfig.model).
serve: $(STAMP)
	$(VENV)/bin/asr serve --model default,streaming $(SERVE_ARGS)

# One BLAS/OpenMP thread per process: the tests run servers, clients and DDP workers side by side.
test: $(STAMP) sysdeps
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy asr server client

# The stubs are a package of their own, asr_grpc/, that server/ and client/ both import
# (`from asr_grpc import asr_pb2, asr_pb2_grpc`); the include mapping sets that import path.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iasr_grpc=proto/asr/v1 --python_out=. --grpc_python_out=. --pyi_out=. \
	  proto/asr/v1/asr.proto

clean:
	rm -rf $(VENV) build *.egg-info
