# sensorcity: `make demo` and `make test` on a fresh Debian machine; both rest on `make install`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests use: the broker, and the QEMU tier's emulator and cross compiler.
# (gcc and libc6-dev build the host mpy-cross inside the QEMU recipe)
APT_PKGS := mosquitto qemu-system-arm gcc-arm-none-eabi libnewlib-arm-none-eabi dpkg-dev gcc libc6-dev \
	systemd
APT_CMDS := mosquitto qemu-system-arm arm-none-eabi-gcc dpkg-source gcc systemd-analyze

.PHONY: install demo test test-fast bench system-deps clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[test]'
	@# MicroPython's ESP32 stubs, outside site-packages (they shadow CPython's stdlib): the
	@# firmware is type-checked against them (tests/test_firmware_types.py)
	@$(BIN)/python -m pip install -q --no-deps --upgrade --target build/typings \
	  micropython-esp32-stubs micropython-stdlib-stubs
	@touch $@

# Debian packages: installed with apt-get when run as root, else one line saying what to run.
system-deps:
	@missing=""; for c in $(APT_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	test -f /usr/share/doc/libnewlib-arm-none-eabi/copyright || missing="$$missing newlib"; \
	test -f /usr/include/stdio.h || missing="$$missing libc6-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS)) >/dev/null || exit 1; \
	  else \
	    echo "missing:$$missing; run: sudo apt-get install -y $(APT_PKGS)"; exit 1; \
	  fi; \
	fi

demo: install
	$(BIN)/sensorcity demo

# The whole suite, nothing skipped, in two runs: its files side by side on TEST_JOBS pytest-xdist
# workers (tests/tiers.py), then the `alone` tests one at a time (an accelerated emulated clock: a
# loaded host shifts it). Fails if either run fails or finds no tests.
TEST_JOBS ?= 3
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15
test: install system-deps
	@rc=0; $(PYTEST) -n $(TEST_JOBS) --dist loadgroup -m "not alone" || rc=$$?; \
	$(PYTEST) -m alone || rc=$$?; \
	exit $$rc

# While editing: the tests that need no emulated tier (no unix port, QEMU or mosquitto), a minute.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not (unixport or qemu or mosquitto)"

bench: install system-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
