# sensorcity: `make demo` and `make test` on a fresh Debian machine; both rest on `make install`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests use: the broker, and the QEMU tier's emulator and cross compiler.
# (gcc and libc6-dev build the host mpy-cross inside the QEMU recipe; chromium and its driver
# test the gateway's status page; python3-apsw, linked to the system's libsqlite3, carries the
# spool's power-loss test's file layer: tests/crashvfs.py)
APT_PKGS := mosquitto qemu-system-arm gcc-arm-none-eabi libnewlib-arm-none-eabi dpkg-dev gcc libc6-dev \
	systemd chromium chromium-driver python3-apsw lintian
APT_CMDS := mosquitto qemu-system-arm arm-none-eabi-gcc dpkg-source gcc systemd-analyze chromium chromedriver \
	lintian

.PHONY: install demo test test-fast bench system-deps clean dist deb test-pi

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
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
	test -d /usr/lib/python3/dist-packages/apsw || missing="$$missing python3-apsw"; \
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

# The .deb on a Pi's architecture: an arm64 Debian root (mmdebstrap, cached in
# ~/.cache/sensorcity/pi-rootfs/) run through qemu-user; minutes the first time, root only
# (docs/deployment.md). Its own target: the first run takes longer than make test may.
PI_APT_PKGS := mmdebstrap qemu-user-static binfmt-support arch-test
test-pi: install system-deps
	@command -v mmdebstrap >/dev/null && test -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P || \
	  if [ "$$(id -u)" = 0 ]; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PI_APT_PKGS)) >/dev/null || exit 1; \
	  else echo "missing: run sudo apt-get install -y $(PI_APT_PKGS)"; exit 1; fi
	SENSORCITY_TEST_PI=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider hil_tests/test_pi.py

# the gateway's Debian package (packaging/deb/, docs/deployment.md), into dist/
deb: install
	sh packaging/deb/build.sh $(BIN)/python dist

# the wheel and sdist (the wheel built from the sdist), into dist/
dist: install
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info
